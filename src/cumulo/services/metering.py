"""Metering: which resources pay which rate from when to when, recorded as intervals
(UsageIntervalRow) in the transaction that records each state change, so usage is computed
from what was recorded (across restarts), never from a counter.

What is billable (like EC2):
- an instance pays its type's hourly price while `running` or `rebooting` (a reboot keeps
  the VM on its host). It pays nothing while `pending`, `starting`, `stopping`, `stopped`,
  `paused` (the host froze it: the host's fault, not the user's), `error` or `deleting`;
- its boot disk pays the volume price per GiB-month for as long as the instance exists, in
  every state (a stopped instance pays for its disks only), until its host reports it gone;
- a volume or a snapshot pays per GiB-month of its size from its create until its host
  reports it deleted (a volume that grows: one interval per size);
- a public IP pays per hour from its allocation to its release (an instance's automatic one
  from the instance's create to its deletion).

Timestamps are whole seconds (the clock's, truncated): usage is exact to the second.

One call per change: `sync` (the resource's rates now: intervals whose rate is no longer
among them are closed, new ones opened), `end` (the resource is gone). The helpers below
say per resource which rates apply; a new billable resource needs one call of `sync` where
its state changes (see `dedicated_host`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from cumulo.config import Settings
from cumulo.db.tables import UsageIntervalRow
from cumulo.domain.instance import InstanceState
from cumulo.services import prices
from cumulo.services.context import Services
from cumulo.services.prices import Rate

# An instance's compute is billed in these states only (see the module doc).
BILLED_STATES = frozenset({InstanceState.RUNNING.value, InstanceState.REBOOTING.value})


# Built once: every instance's state change runs them (a create, a delete, a report).
_U = UsageIntervalRow
_INSERT = insert(_U)
_OPEN = (select(_U.id, _U.resource_id, _U.kind, _U.basis, _U.quantity, _U.unit_price,
                _U.period_hours, _U.started_at)
         .where(_U.resource_id.in_(bindparam("ids", expanding=True)), _U.ended_at.is_(None))
         .order_by(_U.id))
_CLOSE = (update(_U).where(_U.id.in_(bindparam("ids", expanding=True)))
          .values(ended_at=bindparam("at", type_=_U.ended_at.type)))
_DROP = delete(_U).where(_U.id.in_(bindparam("ids", expanding=True)))


def now(svc: Services) -> datetime:
    """The time a transition is recorded at: the service's clock, to the second."""
    return svc.clock().replace(microsecond=0)


def _key(kind: str, basis: str, quantity: int, unit_price: str, period_hours: int
         ) -> tuple[str, str, int, str, int]:
    return kind, basis, quantity, unit_price, period_hours


def _price_text(rate: Rate) -> str:
    return format(rate.unit_price.normalize(), "f")


def start(s: Session, at: datetime, project_id: str, resource_id: str, resource_name: str,
          rates: Sequence[Rate]) -> None:
    """Open an interval per rate of a resource that has none open (it was just created)."""
    _open(s, at, [Change(project_id, resource_id, resource_name, rates)])


def _open(s: Session, at: datetime, changes: Sequence[Change]) -> None:
    """Open an interval per rate of each change, in one statement. Columns on the session's
    connection, not ORM objects: nothing reads them back in the transaction that writes them,
    and a flush of objects with generated keys was one INSERT per interval."""
    rows = [{"project_id": c.project_id, "resource_id": c.resource_id,
             "resource_name": c.resource_name[:63], "kind": r.kind, "basis": r.basis[:80],
             "quantity": r.quantity, "unit_price": _price_text(r),
             "period_hours": r.period_hours, "started_at": at, "ended_at": None}
            for c in changes for r in c.rates]
    if rows:
        s.connection().execute(_INSERT, rows)


@dataclass(frozen=True)
class Change:
    """A resource's rates from now on (see `sync`)."""

    project_id: str
    resource_id: str
    resource_name: str
    rates: Sequence[Rate]


def sync(s: Session, at: datetime, project_id: str, resource_id: str, resource_name: str,
         rates: Sequence[Rate]) -> None:
    """Make the resource's open intervals those of `rates` from `at` on: an open interval
    whose rate is not among them ends at `at`; a rate without one opens one. A rate already
    open continues (no cut where nothing changed)."""
    sync_many(s, at, [Change(project_id, resource_id, resource_name, rates)])


def sync_many(s: Session, at: datetime, changes: Sequence[Change]) -> None:
    """`sync` of several resources in one query (an agent's report of many instances), and
    at most one statement each to close, drop and open intervals."""
    if not changes:
        return
    wanted = {c.resource_id: list(c.rates) for c in changes}
    closed: list[int] = []
    dropped: list[int] = []
    for iid, resource_id, *key, started_at in s.connection().execute(
            _OPEN, {"ids": list(wanted)}):
        rates = wanted[resource_id]
        match = next((r for r in rates if _key(r.kind, r.basis[:80], r.quantity,
                                               _price_text(r), r.period_hours)
                      == tuple(key)), None)
        if match is not None:
            rates.remove(match)
        elif started_at >= at:
            dropped.append(iid)  # opened and closed within one second: nothing to bill
        else:
            closed.append(iid)
    conn = s.connection()
    if closed:
        conn.execute(_CLOSE, {"ids": closed, "at": at})
    if dropped:
        conn.execute(_DROP, {"ids": dropped})
    _open(s, at, [Change(c.project_id, c.resource_id, c.resource_name, wanted[c.resource_id])
                  for c in changes])


def end(s: Session, at: datetime, resource_ids: Collection[str]) -> None:
    """The resources are gone: their open intervals end at `at`."""
    if resource_ids:
        s.execute(update(UsageIntervalRow)
                  .where(UsageIntervalRow.resource_id.in_(list(resource_ids)),
                         UsageIntervalRow.ended_at.is_(None))
                  .values(ended_at=at), execution_options={"synchronize_session": False})


def end_project(s: Session, at: datetime, project_id: str) -> None:
    """The project is deleted with what it still held (its public IPs)."""
    s.execute(update(UsageIntervalRow)
              .where(UsageIntervalRow.project_id == project_id,
                     UsageIntervalRow.ended_at.is_(None))
              .values(ended_at=at), execution_options={"synchronize_session": False})


def instance_rates(settings: Settings, state: str, type_name: str | None, vcpus: int,
                   ram_mib: int, disk_gib: int) -> list[Rate]:
    out = [prices.boot_disk_rate(settings, disk_gib)]
    if state in BILLED_STATES:
        out.append(prices.instance_rate(settings, type_name, vcpus, ram_mib))
    return out


def instance(s: Session, settings: Settings, at: datetime, project_id: str, instance_id: str,
             name: str, state: str, type_name: str | None, vcpus: int, ram_mib: int,
             disk_gib: int) -> None:
    """An instance's state (or size) changed: its rates from `at` on. The hook for every
    place an instance's state is written (a bare-metal server's too: its `bm1.*` type is
    priced like any type). Many at once: sync_many with instance_change."""
    sync_many(s, at, [instance_change(settings, project_id, instance_id, name, state, type_name,
                                      vcpus, ram_mib, disk_gib)])


def instance_change(settings: Settings, project_id: str, instance_id: str, name: str,
                    state: str, type_name: str | None, vcpus: int, ram_mib: int,
                    disk_gib: int) -> Change:
    return Change(project_id, instance_id, name,
                  instance_rates(settings, state, type_name, vcpus, ram_mib, disk_gib))


def dedicated_host(s: Session, settings: Settings, at: datetime, project_id: str,
                   host_id: str, name: str, allocated: bool) -> None:
    """A dedicated host pays while allocated to a project, whatever runs on it: call with
    allocated=True when it is allocated, False when it is released."""
    if allocated:
        sync(s, at, project_id, host_id, name, [prices.dedicated_host_rate(settings)])
    else:
        end(s, at, [host_id])
