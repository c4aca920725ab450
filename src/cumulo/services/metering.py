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

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cumulo.config import Settings
from cumulo.db.tables import UsageIntervalRow
from cumulo.domain.instance import InstanceState
from cumulo.services import prices
from cumulo.services.context import Services
from cumulo.services.prices import Rate

# An instance's compute is billed in these states only (see the module doc).
BILLED_STATES = frozenset({InstanceState.RUNNING.value, InstanceState.REBOOTING.value})


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
    s.add_all(UsageIntervalRow(
        project_id=project_id, resource_id=resource_id, resource_name=resource_name[:63],
        kind=r.kind, basis=r.basis[:80], quantity=r.quantity, unit_price=_price_text(r),
        period_hours=r.period_hours, started_at=at, ended_at=None) for r in rates)


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
    """`sync` of several resources in one query (an agent's report of many instances)."""
    if not changes:
        return
    wanted = {c.resource_id: list(c.rates) for c in changes}
    for row in s.scalars(select(UsageIntervalRow).where(
            UsageIntervalRow.resource_id.in_(list(wanted)), UsageIntervalRow.ended_at.is_(None))):
        rates = wanted[row.resource_id]
        match = next((r for r in rates if _key(r.kind, r.basis[:80], r.quantity,
                                               _price_text(r), r.period_hours)
                      == _key(row.kind, row.basis, row.quantity, row.unit_price,
                              row.period_hours)), None)
        if match is not None:
            rates.remove(match)
        elif row.started_at >= at:
            s.delete(row)  # opened and closed within one second: nothing to bill
        else:
            row.ended_at = at
    for c in changes:
        start(s, at, c.project_id, c.resource_id, c.resource_name, wanted[c.resource_id])


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
