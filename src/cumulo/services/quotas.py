"""Quotas: how much each project may hold, checked in the transaction that adds to it.

A project's limits are the configuration's defaults (`[quotas]`) overridden by what an admin
set for it (`cumulo project quota set`, kept in the project's row). A create reads the
project's usage after locking the project: on PostgreSQL its row (SELECT ... FOR UPDATE),
on SQLite the database's write lock. So two creates of one project never both see the last
free unit, whatever their zones or resources, and 20 concurrent creates cannot overshoot.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    DedicatedHostRow,
    InstanceRow,
    NetworkRow,
    ProjectRow,
    PublicIpRow,
    SnapshotRow,
    VolumeRow,
)
from cumulo.domain.errors import InvalidInput, NotFound, QuotaExceeded
from cumulo.domain.validation import MAX_INTEGER, one_line
from cumulo.domain.volume import SnapshotState
from cumulo.services import events
from cumulo.services.auth import require_admin, scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import QuotaLine, QuotaView

# Each limit's key (what `quota set` takes) and how the refusal names its unit.
UNITS: dict[str, str] = {
    "instances": "instances",
    "vcpus": "vCPUs",
    "ram_mib": "MiB of RAM",
    "volume_gib": "GiB of volumes",
    "snapshots": "snapshots",
    "public_ips": "public IPs",
    "networks": "networks",
    "dedicated_hosts": "dedicated hosts",
}
UNLIMITED = "unlimited"
DEFAULT = "default"  # `quota set NAME KEY=default`: back to the configuration's value

# What counts (see config.QuotaSettings): built once, a create runs one of these per batch.
_P: Any = bindparam("project")
_INSTANCES = select(func.count(), func.coalesce(func.sum(InstanceRow.vcpus), 0),
                    func.coalesce(func.sum(InstanceRow.ram_mib), 0)).where(
    InstanceRow.project_id == _P, InstanceRow.desired_power != "deleted")
_USAGE: dict[str, Any] = {
    "volume_gib": select(func.coalesce(func.sum(VolumeRow.size_gib), 0)).where(
        VolumeRow.project_id == _P, VolumeRow.desired != "deleted"),
    "snapshots": select(func.count()).where(SnapshotRow.project_id == _P,
                                            SnapshotRow.state != SnapshotState.DELETING),
    "public_ips": select(func.count()).where(PublicIpRow.project_id == _P,
                                             PublicIpRow.auto.is_(False)),
    "networks": select(func.count()).where(NetworkRow.project_id == _P,
                                           NetworkRow.is_default.is_(False)),
    "dedicated_hosts": select(func.count()).where(DedicatedHostRow.project_id == _P,
                                                  DedicatedHostRow.allocated_host_id.is_not(None)),
}
_INSTANCE_KEYS = ("instances", "vcpus", "ram_mib")
# SQLite: an UPDATE that matches no row takes the database's write lock (see hosts.lock_zone).
_SQLITE_WRITE_LOCK = update(ProjectRow).where(ProjectRow.id == "").values(name=ProjectRow.name)


def usage(s: Session, project_id: str, keys: Collection[str] = tuple(UNITS)) -> dict[str, int]:
    """What the project holds now, for these keys."""
    conn = s.connection()
    out: dict[str, int] = {}
    if any(k in _INSTANCE_KEYS for k in keys):
        count, vcpus, ram = conn.execute(_INSTANCES, {"project": project_id}).one()
        out.update(instances=int(count), vcpus=int(vcpus), ram_mib=int(ram))
    for key in keys:
        if key in _USAGE:
            out[key] = int(conn.execute(_USAGE[key], {"project": project_id}).scalar_one())
    return out


def limits(svc: Services, own: Mapping[str, Any]) -> dict[str, int | None]:
    """Every limit of a project whose own limits are `own` (None: unlimited)."""
    defaults = svc.settings.quotas
    return {k: own[k] if k in own else getattr(defaults, k) for k in UNITS}


def lock(s: Session, projects: Iterable[ProjectRow], *, read_under_write_lock: bool = False
         ) -> dict[str, dict[str, Any]]:
    """Lock these projects until the transaction ends; their own limits, read under the lock.
    In one order (by id), so that two transactions cannot each hold a project the other
    waits for. `read_under_write_lock`: on SQLite, the rows were read after the transaction
    took the write lock, so they are current and locked already (nothing to do)."""
    rows = {p.id: p for p in projects}
    if s.get_bind().dialect.name == "sqlite":
        if read_under_write_lock:
            return {pid: dict(p.quotas or {}) for pid, p in rows.items()}
        s.execute(_SQLITE_WRITE_LOCK)
        query = select(ProjectRow.id, ProjectRow.quotas)
    else:
        query = select(ProjectRow.id, ProjectRow.quotas).with_for_update()
    query = query.where(ProjectRow.id.in_(sorted(rows))).order_by(ProjectRow.id)
    return {pid: dict(own or {}) for pid, own in s.execute(query)}


@dataclass(frozen=True)
class Budget:
    """A project's limits and usage within one transaction (immutable: `charge` returns the
    next one, so that a create that fails leaves the budget as it was)."""

    project_id: str
    project_name: str
    limits: Mapping[str, int | None]
    used: Mapping[str, int]

    def charge(self, adding: Mapping[str, int], resource: tuple[str, str, str]) -> Budget:
        """The budget after adding `adding`, or QuotaExceeded naming the first limit passed."""
        for key, n in adding.items():
            limit = self.limits[key]
            if n > 0 and limit is not None and self.used[key] + n > limit:
                raise QuotaExceeded(
                    f"project {self.project_name!r} would use {self.used[key] + n} of "
                    f"{limit} {UNITS[key]}", project_id=self.project_id, resource=resource)
        return Budget(self.project_id, self.project_name, self.limits,
                      {k: v + adding.get(k, 0) for k, v in self.used.items()})


def budget(s: Session, svc: Services, prj: ProjectRow, keys: Collection[str], *,
           own: Mapping[str, Any] | None = None) -> Budget:
    """The project's budget for these keys; locks the project unless `own` (its limits read
    under the lock) is given."""
    if own is None:
        own = lock(s, [prj]).get(prj.id, {})
    return Budget(prj.id, prj.name, limits(svc, own), usage(s, prj.id, keys))


def check(s: Session, svc: Services, prj: ProjectRow, adding: Mapping[str, int],
          resource: tuple[str, str, str]) -> None:
    """Lock the project and refuse what would take it past a limit (in the caller's
    transaction: what it then writes is counted by the next create)."""
    budget(s, svc, prj, adding.keys()).charge(adding, resource)


P = ParamSpec("P")
T = TypeVar("T")


def records_refusals(fn: Callable[P, T]) -> Callable[P, T]:
    """A service call (its first argument: the Services) whose QuotaExceeded is logged as an
    event. Written in a transaction of its own once the refused one rolled back."""

    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except QuotaExceeded as e:
            svc = args[0]
            assert isinstance(svc, Services)
            with svc.db.session() as s:
                events.add(s, [refusal(e)])
            raise

    return run


def refusal(e: QuotaExceeded) -> events.Event:
    kind, rid, name = e.resource
    return events.Event(project_id=e.project_id, resource_type=kind, resource_id=rid,
                        resource_name=name, kind="quota_refused", detail=e.message)


# -- the admin's commands ------------------------------------------------------------------


def show(svc: Services, who: Principal, name: str | None) -> QuotaView:
    """Every limit of the project beside its usage. Admins: any project; members: their own."""
    with svc.db.session() as s:
        prj = scope_project(s, who, name)
        return _view(svc, prj, usage(s, prj.id))


def _view(svc: Services, prj: ProjectRow, used: Mapping[str, int]) -> QuotaView:
    own = prj.quotas or {}
    lim = limits(svc, own)
    return QuotaView(project=prj.name, quotas=[
        QuotaLine(resource=k, used=used[k], limit=lim[k], default=k not in own) for k in UNITS])


def parse_changes(pairs: Mapping[str, str]) -> dict[str, int | str | None]:
    """KEY=VALUE pairs: a number, `unlimited` or `default`. Refused whole if one is wrong."""
    if not pairs:
        raise InvalidInput("give at least one KEY=VALUE (keys: " + ", ".join(UNITS) + ")",
                           code="invalid_quota")
    out: dict[str, int | str | None] = {}
    for key, value in pairs.items():
        if key not in UNITS:
            raise InvalidInput(f"unknown quota {one_line(key, 40)!r} (keys: "
                               + ", ".join(UNITS) + ")", code="invalid_quota")
        v = value.strip().lower()
        if v in (UNLIMITED, DEFAULT):
            out[key] = None if v == UNLIMITED else DEFAULT
        elif v.isascii() and v.isdigit() and int(v) <= MAX_INTEGER:
            out[key] = int(v)
        else:
            raise InvalidInput(f"quota {key}: {one_line(value, 40)!r} is not a number from 0 "
                               f"to {MAX_INTEGER}, {UNLIMITED!r} or {DEFAULT!r}",
                               code="invalid_quota")
    return out


def set_limits(svc: Services, who: Principal, name: str, pairs: Mapping[str, str]
               ) -> QuotaView:
    """Set some of a project's limits (admin). A limit below the current usage is allowed:
    nothing is taken away, further creates are refused."""
    require_admin(who)
    changes = parse_changes(pairs)
    with svc.db.session() as s:
        prj = s.scalar(select(ProjectRow).where(ProjectRow.name == name))
        if prj is None:
            raise NotFound(f"project {name!r} does not exist", code="unknown_project")
        own = lock(s, [prj]).get(prj.id, {})
        for key, value in changes.items():
            if value == DEFAULT:
                own.pop(key, None)
            else:
                own[key] = value
        prj.quotas = own  # a new dict: the JSON column sees the change
        said = ", ".join(f"{k}={UNLIMITED if v is None else v}" for k, v in changes.items())
        events.add(s, [events.Event(project_id=prj.id, resource_type="project",
                                    resource_id=prj.id, resource_name=prj.name,
                                    kind="quota_changed", actor="admin", detail=said)])
        s.flush()
        return _view(svc, prj, usage(s, prj.id))
