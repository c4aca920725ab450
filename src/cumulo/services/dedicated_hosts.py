"""Dedicated hosts (EC2's Dedicated Hosts, sole-tenant nodes): a whole hypervisor host
reserved for one project.

While a dedicated host is `available`, placement (cumulo.scheduler.placement, filter
`_tenancy`) puts on it only that project's instances of dedicated tenancy, and never a
shared-tenancy one: creates now, and any later placement (migration, drain) that builds its
request the same way. Its capacity is not overcommitted, and each instance placed on it gets
host CPUs of its own (`cpu_set`), which its agent pins the VM's vCPU threads to.

Allocating is an admin's, or a project member's within the project's `dedicated_hosts`
quota; only an admin names the host (members get one picked: an empty enabled host that is up).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import DedicatedHostRow, HostRow, InstanceRow, MigrationRow, ProjectRow
from cumulo.domain.errors import (
    Conflict,
    Forbidden,
    InsufficientCapacity,
    InvalidInput,
    NotFound,
)
from cumulo.domain.ids import is_id, new_id
from cumulo.scheduler.placement import HostCapacity
from cumulo.services import events, hosts, metering, quotas
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import DedicatedHostCapacity, DedicatedHostView

AVAILABLE, RELEASED = "available", "released"
TENANCIES = ("shared", "dedicated")


def allocate(svc: Services, who: Principal, project: str | None, zone: str,
             host: str | None = None) -> DedicatedHostView:
    """Reserve a host of `zone` for the project: `host` (admins only), or an empty enabled
    host that is up. Refused if the host runs another project's instances."""
    if host is not None and not who.is_admin:
        raise Forbidden("only an admin names the host of a dedicated host (leave out --host)",
                        code="forbidden")
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        if zone not in svc.settings.zone_names():
            raise NotFound(f"unknown zone {zone!r} (see `cumulo zone list`)",
                           code="unknown_zone")
        hosts.lock_zone(s, zone)  # no create places on the host meanwhile
        if not who.is_admin:
            quotas.check(s, svc, prj, {"dedicated_hosts": 1}, ("dedicated_host", "", zone))
        caps = hosts.capacities(s, svc.settings, zone)
        cap = _named(s, caps, zone, host) if host is not None else _pick(caps, zone)
        if cap.dedicated_id is not None:
            raise Conflict(f"host {cap.name} is already dedicated host {cap.dedicated_id}",
                           code="host_already_dedicated")
        others = _other_tenants(s, cap.host_id, prj.id)
        if others:
            raise Conflict(f"host {cap.name} runs {len(others)} instance(s) of another project: "
                           "a dedicated host holds one project's instances only",
                           code="host_has_other_tenants")
        row = DedicatedHostRow(id=new_id("h"), project_id=prj.id, host_id=cap.host_id,
                               zone=zone, state=AVAILABLE, allocated_host_id=cap.host_id)
        s.add(row)
        s.flush()
        metering.dedicated_host(s, svc.settings, metering.now(svc), prj.id, row.id, row.id, True)
        events.add(s, [events.Event(prj.id, "dedicated_host", row.id, row.id, "allocated",
                                    "admin" if who.is_admin else "user",
                                    f"zone {zone}")])
        return _views(s, svc, who, [row])[0]


def _named(s: Session, caps: Sequence[HostCapacity], zone: str, name: str) -> HostCapacity:
    for cap in caps:
        if cap.name == name:
            return cap
    other = s.scalar(select(HostRow.zone).where(HostRow.name == name))
    if other is not None:
        raise InvalidInput(f"host {name!r} is in zone {other}, not {zone}",
                           code="host_zone_mismatch")
    raise NotFound(f"no host {name!r} (see `cumulo host list`)", code="unknown_host")


def _pick(caps: Sequence[HostCapacity], zone: str) -> HostCapacity:
    """The first (by name) empty enabled host of the zone that is up and not dedicated."""
    fit = sorted((c for c in caps if c.enabled and c.up and not c.instances
                  and c.dedicated_id is None), key=lambda c: c.name)
    if not fit:
        raise InsufficientCapacity(
            f"no empty host to dedicate in zone {zone}: {len(caps)} host(s), "
            f"{sum(c.dedicated_id is not None for c in caps)} dedicated already, "
            f"{sum(bool(c.instances) for c in caps)} running instances, "
            f"{sum(not (c.enabled and c.up) for c in caps)} disabled or down",
            code="no_host_available")
    return fit[0]


def _other_tenants(s: Session, host_id: str, project_id: str) -> list[str]:
    return list(s.scalars(select(InstanceRow.id).where(InstanceRow.host_id == host_id,
                                                       InstanceRow.project_id != project_id)))


def list_all(svc: Services, who: Principal, project: str | None) -> list[DedicatedHostView]:
    """The project's dedicated hosts, available ones and released ones."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = list(s.scalars(select(DedicatedHostRow)
                              .where(DedicatedHostRow.project_id == prj.id)
                              .order_by(DedicatedHostRow.allocated_at, DedicatedHostRow.id)))
        return _views(s, svc, who, rows)


def show(svc: Services, who: Principal, project: str | None, ref: str) -> DedicatedHostView:
    with svc.db.session() as s:
        return _views(s, svc, who, [find(s, scope_project(s, who, project), ref)])[0]


def release(svc: Services, who: Principal, project: str | None,
            ref: str) -> DedicatedHostView:
    """The host goes back to shared use; refused while instances are on it."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = find(s, prj, ref)
        hosts.lock_zone(s, row.zone)  # no create lands on it while it is released
        s.refresh(row)  # as a concurrent release left it
        if row.state != AVAILABLE:
            raise Conflict(f"dedicated host {row.id} is released already",
                           code="dedicated_host_released")
        names = list(s.scalars(select(InstanceRow.name).where(InstanceRow.host_id == row.host_id)
                               .order_by(InstanceRow.name)))
        if names:
            raise Conflict(f"dedicated host {row.id} still holds instances: "
                           f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}",
                           code="dedicated_host_in_use")
        row.state, row.allocated_host_id, row.released_at = RELEASED, None, datetime.now(UTC)
        metering.dedicated_host(s, svc.settings, metering.now(svc), prj.id, row.id, row.id, False)
        events.add(s, [events.Event(prj.id, "dedicated_host", row.id, row.id, "released",
                                    "admin" if who.is_admin else "user", "")])
        s.flush()
        return _views(s, svc, who, [row])[0]


def find(s: Session, prj: ProjectRow, ref: str) -> DedicatedHostRow:
    """The project's dedicated host `ref`. Another project's is refused as such: its id says
    nothing else about it."""
    if not is_id(ref) or not ref.startswith("h-"):
        raise InvalidInput(f"invalid dedicated host id {ref[:40]!r}: h- and 17 hex digits",
                           code="invalid_dedicated_host")
    row = s.get(DedicatedHostRow, ref)
    if row is None:
        raise NotFound(f"no dedicated host {ref} (see `cumulo dedicated-host list`)",
                       code="unknown_dedicated_host")
    if row.project_id != prj.id:
        raise Forbidden(f"dedicated host {ref} is dedicated to another project",
                        code="dedicated_to_another_project")
    return row


def tenancy_of(s: Session, prj: ProjectRow, tenancy: str | None,
               dedicated_host: str | None) -> tuple[str, str | None]:
    """A create's (tenancy, dedicated host id): --dedicated-host implies dedicated tenancy."""
    if tenancy is not None and tenancy not in TENANCIES:
        raise InvalidInput(f"unknown tenancy {tenancy[:20]!r}: shared or dedicated",
                           code="invalid_tenancy")
    if dedicated_host is None:
        return tenancy or "shared", None
    if tenancy == "shared":
        raise InvalidInput("--dedicated-host places with dedicated tenancy, not shared",
                           code="invalid_tenancy")
    row = find(s, prj, dedicated_host)
    if row.state != AVAILABLE:
        raise Conflict(f"dedicated host {row.id} is released", code="dedicated_host_released")
    return "dedicated", row.id


def cpu_set_for(s: Session, host: HostCapacity, vcpus: int) -> list[int] | None:
    """Host CPUs of its own for an instance of `vcpus` placed on `host` (None: a shared host,
    nothing pinned): the lowest that no other instance of the host is pinned to, of the CPU
    ids its agent registered (the machine's: simulated hosts of one machine share them), and
    that no migration arriving there holds."""
    if host.dedicated_id is None:
        return None
    arriving = select(MigrationRow.cpu_set).where(
        MigrationRow.destination_host_id == host.host_id, MigrationRow.active)
    taken = {c for q in (select(InstanceRow.cpu_set).where(InstanceRow.host_id == host.host_id),
                         arriving)
             for cpus in s.scalars(q) for c in cpus or ()}
    listed = s.scalar(select(HostRow.cpus).where(HostRow.id == host.host_id))
    free = [c for c in (listed or range(host.vcpus_total)) if c not in taken]
    if len(free) < vcpus:  # only if instances are pinned beyond what placement counted
        raise InsufficientCapacity(f"dedicated host {host.dedicated_id} has {len(free)} host "
                                   f"CPUs free, {vcpus} needed", code="no_host_fits")
    return free[:vcpus]


def ids_of_hosts(s: Session, host_ids: set[str]) -> dict[str, str]:
    """Host id -> the id of the dedicated host it is now (for instance views)."""
    if not host_ids:
        return {}
    return {hid: did for hid, did in s.execute(
        select(DedicatedHostRow.allocated_host_id, DedicatedHostRow.id)
        .where(DedicatedHostRow.allocated_host_id.in_(host_ids))) if hid is not None}


def _views(s: Session, svc: Services, who: Principal,
           rows: list[DedicatedHostRow]) -> list[DedicatedHostView]:
    host_ids = {r.host_id for r in rows}
    names = dict(s.execute(select(HostRow.id, HostRow.name).where(HostRow.id.in_(host_ids))).all())
    projects = dict(s.execute(select(ProjectRow.id, ProjectRow.name)
                              .where(ProjectRow.id.in_({r.project_id for r in rows}))).all())
    members: dict[str | None, list[str]] = defaultdict(list)
    for hid, iname in s.execute(select(InstanceRow.host_id, InstanceRow.name)
                                .where(InstanceRow.host_id.in_(host_ids))
                                .order_by(InstanceRow.name)):
        members[hid].append(iname)
    caps = {c.host_id: c for zone in {r.zone for r in rows}
            for c in hosts.capacities(s, svc.settings, zone)}
    out = []
    for r in rows:
        live = r.state == AVAILABLE
        cap = caps.get(r.host_id) if live else None
        out.append(DedicatedHostView(
            id=r.id, zone=r.zone, host=names.get(r.host_id) if who.is_admin else None,
            project=projects.get(r.project_id, ""), state=r.state,
            instances=members[r.host_id] if live else [],
            capacity=None if cap is None else DedicatedHostCapacity(
                vcpus_total=cap.vcpus_allocatable, vcpus_used=cap.vcpus_used,
                ram_mib_total=cap.ram_mib_allocatable, ram_mib_used=cap.ram_mib_used),
            allocated_at=r.allocated_at, released_at=r.released_at))
    return out
