"""Block volumes and their snapshots: validate, authorize, record intent, wake the agent.

A volume's file lives on one host of its zone (chosen at create: volume_placement); it
attaches to an instance of any host of that zone: on another host, over an NBD export the
storage host serves (a secret name and TLS-PSK key per attachment, made here). The agents
converge files, exports and attachments and report back.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, InstanceRow, ProjectRow, SnapshotRow, VolumeRow
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.domain.ids import is_id, new_id
from cumulo.domain.instance import DesiredPower
from cumulo.domain.validation import dns_label, positive
from cumulo.domain.volume import (
    SnapshotState,
    VolumeAction,
    VolumeState,
    check_snapshot_delete,
    check_snapshot_source,
    check_volume,
)
from cumulo.services import (
    baremetal_instances,
    events,
    hosts,
    lookups,
    metering,
    migrations,
    prices,
    quotas,
    storage_down,
    volume_exports,
)
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import SnapshotView, VolumeView
from cumulo.services.volume_placement import StorageCandidate, storage_host

PRESENT, DELETED = "present", "deleted"
# The boot disk is vda and the cloud-init seed vdb: volumes start at vdc.
_DEVICES = [f"vd{c}" for c in "cdefghijklmnopqrstuvwxyz"]


def _limits(svc: Services, type_name: str) -> tuple[int, int, str]:
    """The type's (iops, mbps, write_error)."""
    vt = svc.settings.volume_type(type_name)
    return (vt.iops, vt.mbps, vt.write_error) if vt else (0, 0, "stop")


def views(s: Session, svc: Services, rows: list[VolumeRow], project: str) -> list[VolumeView]:
    inst_names = dict(s.execute(select(InstanceRow.id, InstanceRow.name).where(
        InstanceRow.id.in_([r.attached_to or r.want_instance_id for r in rows
                            if r.attached_to or r.want_instance_id]))).all())
    snaps = dict(s.execute(select(SnapshotRow.id, SnapshotRow.name).where(
        SnapshotRow.id.in_([r.source_snapshot_id for r in rows if r.source_snapshot_id]))).all())
    down = storage_down.down_hosts(s, (r.host_id for r in rows))
    out = []
    for r in rows:
        iops, mbps, write_error = _limits(svc, r.type_name)
        attached = r.attached_to or r.want_instance_id
        state, reason = storage_down.shown(r.state, r.state_reason, down.get(r.host_id or ""))
        out.append(VolumeView(
            id=r.id, name=r.name, project=project, zone=r.zone, size_gib=r.size_gib,
            type=r.type_name, iops=iops, mbps=mbps, write_error=write_error, state=state,
            state_reason=reason,
            attached_to=inst_names.get(attached) if attached else None,
            device=r.device if attached else None,
            delete_on_termination=r.delete_on_termination,
            source_snapshot=snaps.get(r.source_snapshot_id or ""), created_at=r.created_at))
    return out


def _view(s: Session, svc: Services, row: VolumeRow, project: str) -> VolumeView:
    return views(s, svc, [row], project)[0]


def find(s: Session, prj: ProjectRow, ref: str) -> VolumeRow:
    q = select(VolumeRow).where(VolumeRow.project_id == prj.id)
    q = q.where(VolumeRow.id == ref) if is_id(ref) else q.where(VolumeRow.name == ref)
    row = s.scalar(q)
    if row is None:
        raise NotFound(f"no volume {ref!r} in project {prj.name!r}", code="unknown_volume")
    return row


def _find_snapshot(s: Session, prj: ProjectRow, ref: str) -> SnapshotRow:
    q = select(SnapshotRow).where(SnapshotRow.project_id == prj.id)
    q = q.where(SnapshotRow.id == ref) if is_id(ref) else q.where(SnapshotRow.name == ref)
    row = s.scalar(q)
    if row is None:
        raise NotFound(f"no snapshot {ref!r} in project {prj.name!r}", code="unknown_snapshot")
    return row


def _check_size(svc: Services, size_gib: int) -> int:
    return positive(size_gib, "volume size (GiB)", maximum=svc.settings.max_volume_gib)


def _event(prj: ProjectRow, row: VolumeRow | SnapshotRow, kind: str, detail: str = ""
           ) -> list[events.Event]:
    rtype = "volume" if isinstance(row, VolumeRow) else "snapshot"
    return [events.Event(prj.id, rtype, row.id, row.name, kind, detail=detail)]


@quotas.records_refusals
def create(svc: Services, who: Principal, project: str | None, name: str, size_gib: int,
           zone: str | None = None, type_name: str = "standard",
           from_snapshot: str | None = None, delete_on_termination: bool = False) -> VolumeView:
    dns_label(name, "volume name")
    _check_size(svc, size_gib)
    if svc.settings.volume_type(type_name) is None:
        known = ", ".join(t.name for t in svc.settings.volume_types)
        raise NotFound(f"unknown volume type {type_name!r} (known: {known})",
                       code="unknown_volume_type")
    z = svc.settings.zone_or_default(zone)
    if z not in svc.settings.zone_names():
        raise NotFound(f"unknown zone {z!r}", code="unknown_zone")
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        if s.scalar(select(VolumeRow.id).where(VolumeRow.project_id == prj.id,
                                               VolumeRow.name == name)):
            raise Conflict(f"volume {name!r} already exists", code="name_taken")
        quotas.check(s, svc, prj, {"volume_gib": size_gib}, ("volume", "", name))
        host_id: str | None
        source = None
        if from_snapshot is not None:
            source = _find_snapshot(s, prj, from_snapshot)
            check_snapshot_source(source.name, source.state)
            storage_down.refuse(s, source.host_id, f"make a volume from snapshot {source.name!r}")
            if source.zone != z:
                raise InvalidInput(f"snapshot {source.name!r} is in zone {source.zone}, not "
                                   f"{z}", code="zone_mismatch")
            if size_gib < source.size_gib:
                raise InvalidInput(f"the volume must be at least the snapshot's size "
                                   f"({source.size_gib} GiB)", code="invalid_size")
            host_id = source.host_id
        else:
            host_id = storage_host(z, _storage_candidates(s, svc, z))
        row = VolumeRow(id=new_id("vol"), name=name, project_id=prj.id, zone=z, host_id=host_id,
                        size_gib=size_gib, type_name=type_name, state=VolumeState.CREATING,
                        desired=PRESENT, delete_on_termination=delete_on_termination,
                        source_snapshot_id=source.id if source else None)
        s.add(row)
        s.flush()
        metering.start(s, metering.now(svc), prj.id, row.id, name,
                       [prices.volume_rate(svc.settings, size_gib)])
        events.add(s, _event(prj, row, "created", f"{size_gib} GiB, type {type_name}"))
        result = _view(s, svc, row, prj.name)
    svc.notifier.notify(host_id)
    return result


def _storage_candidates(s: Session, svc: Services, zone: str) -> list[StorageCandidate]:
    caps = hosts.capacities(s, svc.settings, zone)
    marked = set(s.scalars(select(HostRow.id).where(HostRow.zone == zone, HostRow.storage)))
    stored: dict[str, int] = {}
    for hid, gib in s.execute(select(VolumeRow.host_id, VolumeRow.size_gib)
                              .where(VolumeRow.zone == zone)):
        if hid:
            stored[hid] = stored.get(hid, 0) + gib
    return [StorageCandidate(c.host_id, c.name, c.up and c.enabled, c.host_id in marked,
                             stored.get(c.host_id, 0)) for c in caps]


def list_all(svc: Services, who: Principal, project: str | None) -> list[VolumeView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = list(s.scalars(select(VolumeRow).where(VolumeRow.project_id == prj.id)
                              .order_by(VolumeRow.created_at, VolumeRow.name)))
        return views(s, svc, rows, prj.name)


def show(svc: Services, who: Principal, project: str | None, ref: str) -> VolumeView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        return _view(s, svc, find(s, prj, ref), prj.name)


def _touch(row: VolumeRow) -> None:
    row.generation += 1
    row.state_reason = ""


def attach(svc: Services, who: Principal, project: str | None, ref: str,
           instance_ref: str) -> VolumeView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = find(s, prj, ref)
        inst = lookups.instance_row(s, prj, instance_ref)
        if baremetal_instances.node_of(s, inst.id) is not None:
            baremetal_instances.refuse_vm_action(inst.name, "a volume")
        if row.desired != DELETED and (row.want_instance_id or row.attached_to):
            raise Conflict(f"volume {row.name!r} is attached already; detach it first",
                           code="volume_in_use")
        check_volume(row.name, row.state, VolumeAction.ATTACH, row.desired == DELETED)
        storage_down.refuse(s, row.host_id, f"attach volume {row.name!r}")
        if inst.desired_power == DesiredPower.DELETED.value:
            raise Conflict(f"instance {inst.name!r} is being deleted", code="invalid_state")
        _not_moving(s, inst)
        if inst.zone != row.zone:
            raise InvalidInput(f"volume {row.name!r} is in zone {row.zone}; instance "
                               f"{inst.name!r} is in {inst.zone}", code="zone_mismatch")
        if inst.host_id != row.host_id:
            if row.client_host_id is not None:
                raise Conflict(f"volume {row.name!r} is still being released by another host",
                               code="volume_in_use")
            volume_exports.export_to(s, row, inst.host_id, inst.name)
        used = set(s.scalars(select(VolumeRow.device).where(
            (VolumeRow.want_instance_id == inst.id) | (VolumeRow.attached_to == inst.id))))
        free = [d for d in _DEVICES if d not in used]
        if not free:
            raise Conflict(f"instance {inst.name!r} has no free device slot",
                           code="too_many_volumes")
        row.want_instance_id, row.device, row.state = inst.id, free[0], VolumeState.ATTACHING
        _touch(row)
        events.add(s, _event(prj, row, "attach_requested", f"to instance {inst.name}"))
        result = _view(s, svc, row, prj.name)
        wake = _hosts_of(row)
    _wake(svc, wake)
    return result


def _not_moving(s: Session, inst: InstanceRow) -> None:
    """An instance that moves keeps its volumes as they were at the start (the move checked
    them: services/migration_volumes); a change waits for its end."""
    busy = migrations.active_migration(s, inst.id)
    if busy is not None:
        raise Conflict(f"instance {inst.name!r} is migrating ({busy}): attach, detach or grow "
                       "its volumes once it ended", code="migration_in_progress")


def _hosts_of(row: VolumeRow) -> set[str]:
    """The hosts that converge the volume: its storage host, and its NBD client's."""
    return {h for h in (row.host_id, row.client_host_id) if h}


def _wake(svc: Services, host_ids: set[str]) -> None:
    for h in sorted(host_ids):
        svc.notifier.notify(h)


def detach(svc: Services, who: Principal, project: str | None, ref: str) -> VolumeView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = find(s, prj, ref)
        if not (row.want_instance_id or row.attached_to):
            raise Conflict(f"volume {row.name!r} is not attached", code="not_attached")
        inst = s.get(InstanceRow, row.want_instance_id or row.attached_to)
        if inst is not None:
            _not_moving(s, inst)
        row.want_instance_id, row.state = None, VolumeState.DETACHING
        _touch(row)
        events.add(s, _event(prj, row, "detach_requested"))
        result = _view(s, svc, row, prj.name)
        wake = _hosts_of(row)
    _wake(svc, wake)
    return result


@quotas.records_refusals
def resize(svc: Services, who: Principal, project: str | None, ref: str,
           size_gib: int) -> VolumeView:
    _check_size(svc, size_gib)
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = find(s, prj, ref)
        if size_gib <= row.size_gib:
            raise InvalidInput(f"volumes only grow: {row.name!r} is {row.size_gib} GiB, "
                               f"asked {size_gib} GiB", code="invalid_size")
        check_volume(row.name, row.state, VolumeAction.RESIZE, row.desired == DELETED)
        storage_down.refuse(s, row.host_id, f"grow volume {row.name!r}")
        holder = row.want_instance_id or row.attached_to
        inst = s.get(InstanceRow, holder) if holder else None
        if inst is not None:
            _not_moving(s, inst)
        quotas.check(s, svc, prj, {"volume_gib": size_gib - row.size_gib},
                     ("volume", row.id, row.name))
        events.add(s, _event(prj, row, "resize_requested",
                             f"from {row.size_gib} to {size_gib} GiB"))
        row.size_gib = size_gib
        metering.sync(s, metering.now(svc), prj.id, row.id, row.name,
                      [prices.volume_rate(svc.settings, size_gib)])
        _touch(row)
        result = _view(s, svc, row, prj.name)
        wake = _hosts_of(row)  # over NBD both grow it: the storage host, then the instance's
    _wake(svc, wake)
    return result


def delete(svc: Services, who: Principal, project: str | None, ref: str) -> VolumeView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = find(s, prj, ref)
        if row.want_instance_id or row.attached_to:
            raise Conflict(f"volume {row.name!r} is attached; detach it first",
                           code="volume_in_use")
        if row.desired == DELETED:
            raise Conflict(f"volume {row.name!r} is already being deleted",
                           code="invalid_state")
        row.desired, row.state = DELETED, VolumeState.DELETING
        _touch(row)
        events.add(s, _event(prj, row, "delete_requested"))
        result = _view(s, svc, row, prj.name)
        host_id = row.host_id
    svc.notifier.notify(host_id)
    return result


def release_for_instance(s: Session, instance_id: str) -> set[str]:
    """The instance is being deleted: detach its volumes, and delete those that asked for it.
    Returns the hosts to wake."""
    wake: set[str] = set()
    for row in s.scalars(select(VolumeRow).where(VolumeRow.want_instance_id == instance_id)):
        row.want_instance_id = None
        row.state = VolumeState.DETACHING
        if row.delete_on_termination:
            row.desired, row.state = DELETED, VolumeState.DELETING
        _touch(row)
        wake |= _hosts_of(row)
    return wake


def _snap_view(s: Session, row: SnapshotRow, project: str,
               down: dict[str, str] | None = None) -> SnapshotView:
    """`down`: the down hosts among those of the snapshots listed with it (read once for a
    list); None: read for this one."""
    if down is None:
        down = storage_down.down_hosts(s, [row.host_id])
    vol = s.get(VolumeRow, row.volume_id) if row.volume_id else None
    state, reason = storage_down.shown(row.state, row.state_reason,
                                       down.get(row.host_id or ""))
    return SnapshotView(id=row.id, name=row.name, project=project, zone=row.zone,
                        volume=vol.name if vol else None, size_gib=row.size_gib,
                        state=state, state_reason=reason, created_at=row.created_at)


@quotas.records_refusals
def snapshot(svc: Services, who: Principal, project: str | None, ref: str,
             name: str) -> SnapshotView:
    dns_label(name, "snapshot name")
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        vol = find(s, prj, ref)
        check_volume(vol.name, vol.state, VolumeAction.SNAPSHOT, vol.desired == DELETED)
        storage_down.refuse(s, vol.host_id, f"snapshot volume {vol.name!r}")
        if s.scalar(select(SnapshotRow.id).where(SnapshotRow.project_id == prj.id,
                                                 SnapshotRow.name == name)):
            raise Conflict(f"snapshot {name!r} already exists", code="name_taken")
        quotas.check(s, svc, prj, {"snapshots": 1}, ("snapshot", "", name))
        row = SnapshotRow(id=new_id("snap"), name=name, project_id=prj.id, volume_id=vol.id,
                          host_id=vol.host_id, zone=vol.zone, size_gib=vol.size_gib,
                          state=SnapshotState.CREATING)
        s.add(row)
        s.flush()
        metering.start(s, metering.now(svc), prj.id, row.id, name,
                       [prices.snapshot_rate(svc.settings, row.size_gib)])
        events.add(s, _event(prj, row, "created", f"of volume {vol.name}"))
        result = _snap_view(s, row, prj.name)
        host_id = vol.host_id
    svc.notifier.notify(host_id)
    return result


def list_snapshots(svc: Services, who: Principal, project: str | None) -> list[SnapshotView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = list(s.scalars(select(SnapshotRow).where(SnapshotRow.project_id == prj.id)
                              .order_by(SnapshotRow.created_at)))
        down = storage_down.down_hosts(s, (r.host_id for r in rows))
        return [_snap_view(s, r, prj.name, down) for r in rows]


def delete_snapshot(svc: Services, who: Principal, project: str | None, ref: str) -> None:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = _find_snapshot(s, prj, ref)
        check_snapshot_delete(row.name, row.state)
        users = s.scalar(select(VolumeRow.name).where(VolumeRow.source_snapshot_id == row.id,
                                                      VolumeRow.state == VolumeState.CREATING))
        if users:
            raise Conflict(f"volume {users!r} is being made from snapshot {row.name!r}",
                           code="snapshot_in_use")
        row.state = SnapshotState.DELETING
        events.add(s, _event(prj, row, "delete_requested"))
        host_id = row.host_id
    svc.notifier.notify(host_id)


def host_of(s: Session, host_id: str | None) -> HostRow | None:
    return s.get(HostRow, host_id) if host_id else None
