"""Live migration, the operator's side: start (check -> claim), list, show, cancel (admins).
A running instance moves live; a stopped one moves cold (its disk copied and checked, nothing
started: see cumulo.domain.migration).

A migration is a record of its own (cumulo.domain.migration has its states and rules); the
instance stays `running` in its user's view throughout. Starting one claims the destination's
capacity (placement counts active migrations: see hosts.capacities) and tells the destination
to prepare; the hosts' reports drive it from there (cumulo.services.migration_agents).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    HostRow,
    InstanceRow,
    MigrationRow,
    PlacementGroupRow,
    ProjectRow,
)
from cumulo.domain import migration as rules
from cumulo.domain.errors import Conflict, InsufficientCapacity, InvalidInput, NotFound
from cumulo.domain.ids import is_id, new_id
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.domain.migration import MigrationPhase
from cumulo.domain.validation import dns_label
from cumulo.scheduler.placement import HostCapacity, Placement, Request, Why, place, rejection
from cumulo.services import dedicated_hosts, events, hosts, migration_volumes, placement_groups
from cumulo.services.auth import require_admin, scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.lookups import instance_row

PROGRESS_KEYS = ("disk_bytes_copied", "disk_bytes_total", "ram_bytes_copied", "ram_bytes_total",
                 "dirty_pages_rate", "expected_downtime_ms", "passes")
# When a migration left the queue (ISO 8601), kept beside its progress (no column of its own):
# its time limits count from it. Absent (a migration started directly, before its first
# write): it started when it was created.
STARTED_KEY = "started_at"


class MigrationProgressView(BaseModel):
    disk_bytes_copied: int = 0
    disk_bytes_total: int = 0
    ram_bytes_copied: int = 0
    ram_bytes_total: int = 0
    dirty_pages_rate: int = 0
    expected_downtime_ms: int = 0
    passes: int = 0


class MigrationView(BaseModel):
    id: str
    instance: str  # the instance's name
    instance_id: str
    project: str
    source: str  # host names (admins only see migrations)
    destination: str
    state: str
    cold: bool  # a stopped instance moved: its disk copied and checked, nothing started
    progress: MigrationProgressView
    downtime_ms: int | None
    total_s: float | None
    reason: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def start(svc: Services, who: Principal, project: str | None, ref: str,
          to: str | None = None) -> MigrationView:
    """Move the running instance `ref` to host `to` (None: the scheduler picks)."""
    require_admin(who)
    if to is not None:
        dns_label(to, "host name")
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = instance_row(s, prj, ref)
        hosts.lock_zone(s, row.zone)  # claims like a create's: one at a time per zone
        cold = check_movable(s, row)
        stored = migration_volumes.check(s, row)
        caps = {c.host_id: c for c in hosts.capacities(s, svc.settings, row.zone)}
        source = caps.get(row.host_id or "")
        if source is None:
            raise Conflict(f"instance {row.name!r} has no host", code="invalid_state")
        if not source.up:
            raise Conflict(f"instance {row.name!r}: its host {source.name} is down; a move "
                           "needs both hosts up (see `cumulo host evacuate`)", code="host_down")
        request = request_for(s, row)
        dest = (_chosen(s, svc, request, caps, source, to, stored) if to is not None
                else pick(svc, request, caps, source, stored))
        underlay = s.scalar(select(HostRow.underlay_ip).where(HostRow.id == dest.host_id))
        if not underlay:
            raise Conflict(f"host {dest.name} has no underlay address: it cannot receive a "
                           "migration", code="no_underlay")
        mig = MigrationRow(
            id=new_id("mig"), instance_id=row.id, instance_name=row.name, project_id=prj.id,
            source_host_id=source.host_id, destination_host_id=dest.host_id,
            state=MigrationPhase.PREPARING.value, progress={}, cold=cold,
            cpu_set=dedicated_hosts.cpu_set_for(s, dest, row.vcpus))
        s.add(mig)
        events.add(s, [events.Event(prj.id, "instance", row.id, row.name, "migration_started",
                                    "admin", mig.id)])
        s.flush()
        shown = view(s, mig)
    svc.notifier.notify(dest.host_id, [])  # wake it: it prepares
    return shown


def check_movable(s: Session, row: InstanceRow) -> bool:
    """Refuse what cannot move now; True: it moves cold (stopped), False: live (running)."""
    cold = settled_power(row)
    if cold is None:
        raise Conflict(f"instance {row.name!r} is {row.state}: a running instance moves live, "
                       "a stopped one cold, nothing else moves", code="invalid_state")
    busy = active_migration(s, row.id)
    if busy is not None:
        raise Conflict(f"instance {row.name!r} is already migrating ({busy})",
                       code="migration_in_progress")
    migration_volumes.check(s, row)
    return cold


_SETTLED = {(InstanceState.RUNNING.value, DesiredPower.RUNNING.value): False,
            (InstanceState.STOPPED.value, DesiredPower.STOPPED.value): True}


def settled_power(row: InstanceRow) -> bool | None:
    """True: stopped (it would move cold), False: running (live), None: neither, or on its
    way to the other (nothing moves then)."""
    return _SETTLED.get((row.state, row.desired_power))


def active_migration(s: Session, instance_id: str) -> str | None:
    """The id of the instance's migration under way, if any."""
    return s.scalar(select(MigrationRow.id).where(MigrationRow.instance_id == instance_id,
                                                  MigrationRow.active))


def request_for(s: Session, row: InstanceRow) -> Request:
    group = None
    if row.placement_group_id is not None:
        group_row = s.get(PlacementGroupRow, row.placement_group_id)
        if group_row is not None:
            group = placement_groups.rule(s, group_row)
    # Tenancy as at its create: a dedicated instance moves to a host dedicated to its project
    # only, a shared one never onto a dedicated host.
    return Request(zone=row.zone, arch=row.arch, vcpus=row.vcpus, ram_mib=row.ram_mib,
                   disk_mib=row.disk_mib, group=group, project=row.project_id,
                   tenancy=row.tenancy)


_REFUSED = {Why.DISABLED: "host_disabled", Why.DOWN: "host_down"}


def _chosen(s: Session, svc: Services, request: Request, caps: dict[str, HostCapacity],
            source: HostCapacity, to: str, stored: dict[str, str]) -> HostCapacity:
    row = s.scalar(select(HostRow).where(HostRow.name == to))
    if row is None:
        raise NotFound(f"no host {to!r} (see `cumulo host list`)", code="unknown_host")
    if row.id == source.host_id:
        raise InvalidInput(f"the instance already runs on host {to}", code="same_host")
    if row.zone != request.zone:
        raise InvalidInput(f"host {to} is in zone {row.zone}, the instance in {request.zone}: "
                           "a migration stays in its zone", code="other_zone")
    migration_volumes.refuse_destination(stored, row.id, to)
    cap = caps[row.id]
    why = rejection(request, cap)
    if why is None:
        return cap
    if why.why in _REFUSED:
        raise Conflict(f"host {to} is {why.why.value}", code=_REFUSED[why.why])
    explained = Placement(None, request, 1, {why.why: (1, why.free)}).explain()
    raise InsufficientCapacity(f"host {to} cannot take it: {explained}", code="no_host_fits")


def pick(svc: Services, request: Request, caps: dict[str, HostCapacity],
         source: HostCapacity, stored: dict[str, str] | None = None) -> HostCapacity:
    """The scheduler's destination: any host but the source and those storing one of the
    instance's volumes (`stored`, from migration_volumes.check)."""
    stored = stored or {}
    others = [c for c in caps.values() if c.host_id != source.host_id
              and c.host_id not in stored]
    placement = place(request, others, svc.settings.placement_policy)
    if placement.host is None:
        skipped = sorted(c.name for c in caps.values() if c.host_id in stored)
        also = (f", and {', '.join(skipped)}, which store{'s' if len(skipped) == 1 else ''} "
                "its volumes" if skipped else "")
        raise InsufficientCapacity(f"{placement.explain()} (besides {source.name}, where it "
                                   f"runs{also})", code="no_host_fits")
    return placement.host


def list_all(svc: Services, who: Principal) -> list[MigrationView]:
    require_admin(who)
    with svc.db.session() as s:
        rows = list(s.scalars(select(MigrationRow).order_by(MigrationRow.created_at,
                                                            MigrationRow.id)))
        return [view(s, r) for r in rows]


def show(svc: Services, who: Principal, ref: str) -> MigrationView:
    require_admin(who)
    with svc.db.session() as s:
        return view(s, _find(s, ref))


def cancel(svc: Services, who: Principal, ref: str) -> MigrationView:
    """Cancel before the switch-over: the source runs on, the destination is cleaned."""
    from cumulo.services import host_drain  # (it builds on this module)

    require_admin(who)
    with svc.db.session() as s:
        row = _find(s, ref)
        rec = load(row)
        why = rules.cancel(rec, "cancelled by an administrator")
        if why is not None:
            raise Conflict(f"migration {row.id} cannot be cancelled: {why}",
                           code="invalid_state")
        store(s, row, rec)
        wake = {row.source_host_id, row.destination_host_id} - {""}
        wake |= host_drain.advance(s, svc, row.source_host_id)
        shown = view(s, row)
    for host_id in wake:
        svc.notifier.notify(host_id, [])
    return shown


def _find(s: Session, ref: str) -> MigrationRow:
    row = s.get(MigrationRow, ref) if is_id(ref) else None
    if row is None:
        raise NotFound(f"no migration {ref[:40]!r} (see `cumulo migration list`)",
                       code="unknown_migration")
    return row


def load(row: MigrationRow) -> rules.Record:
    progress = dict(row.progress or {})
    started_at = progress.pop(STARTED_KEY, None)
    state = MigrationPhase(row.state)
    started = None if state is MigrationPhase.QUEUED else (
        datetime.fromisoformat(started_at) if isinstance(started_at, str) else row.created_at)
    return rules.Record(
        state=state, incoming=row.incoming, switched=row.switched,
        source_done=row.source_done, destination_done=row.destination_done, active=row.active,
        reason=row.reason, progress=progress, downtime_ms=row.downtime_ms,
        total_s=row.total_s, started=started, cold=row.cold, checksum=row.checksum)


def mark_started(row: MigrationRow, now: datetime) -> None:
    """A queued migration starts now (its time limits count from now, not its creation)."""
    row.progress = {**(row.progress or {}), STARTED_KEY: now.isoformat()}


def store(s: Session, row: MigrationRow, rec: rules.Record) -> bool:
    """Write `rec` back; True when the phase changed (an event may be due)."""
    changed = row.state != rec.state.value
    row.state, row.incoming, row.switched = rec.state.value, rec.incoming, rec.switched
    row.source_done, row.destination_done = rec.source_done, rec.destination_done
    row.active, row.reason = rec.active, rec.reason[:500]
    row.progress = dict(rec.progress)
    if rec.started is not None:
        row.progress[STARTED_KEY] = rec.started.isoformat()
    row.downtime_ms, row.total_s = rec.downtime_ms, rec.total_s
    row.checksum = rec.checksum
    row.updated_at = datetime.now(UTC)
    if changed and rec.ended:
        row.finished_at = row.updated_at
        kind = {"completed": "migrated", "failed": "migration_failed",
                "cancelled": "migration_cancelled"}[rec.state.value]
        if rec.state is not MigrationPhase.COMPLETED:
            detail = f"{row.id}: it {'stays' if rec.cold else 'runs on'} where it was"
        elif rec.cold:
            detail = f"{row.id}: moved stopped, its disk copied and checked ({rec.checksum})"
        else:
            detail = f"{row.id}: downtime {rec.downtime_ms} ms, total {rec.total_s} s"
        events.add(s, [events.Event(row.project_id, "instance", row.instance_id,
                                    row.instance_name, kind, "system", detail)])
    s.flush()
    return changed


def view(s: Session, row: MigrationRow) -> MigrationView:
    names = dict(s.execute(select(HostRow.id, HostRow.name).where(
        HostRow.id.in_([row.source_host_id, row.destination_host_id]))).all())
    project = s.scalar(select(ProjectRow.name).where(ProjectRow.id == row.project_id)) or ""
    progress = {k: int((row.progress or {}).get(k, 0)) for k in PROGRESS_KEYS}
    return MigrationView(
        id=row.id, instance=row.instance_name, instance_id=row.instance_id, project=project,
        source=names.get(row.source_host_id, row.source_host_id),
        destination=names.get(row.destination_host_id, row.destination_host_id),
        state=row.state, cold=row.cold, progress=MigrationProgressView(**progress),
        downtime_ms=row.downtime_ms, total_s=row.total_s, reason=row.reason,
        created_at=row.created_at, updated_at=row.updated_at, finished_at=row.finished_at)
