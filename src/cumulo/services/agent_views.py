"""What a host is assigned, as its long-poll answer carries it: its instances, volumes and
snapshots, read from the database and kept per host as recent views (AgentMemory), so that
most answers are a view reused as it is, or with the instances a change named read again.

Most wake-ups of a busy cloud are DNS-only (another host's instance joined a network): they
reuse the host's view, and a host that holds it gets no instance at all. Most of the others
changed one instance (a create, a state report): only that one is read again.
"""

from __future__ import annotations

import base64
import random
import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    AddressRow,
    HostRow,
    ImageRow,
    InstanceRow,
    MigrationRow,
    ProjectRow,
    PublicIpRow,
    SnapshotRow,
    VolumeRow,
)
from cumulo.domain.volume import SnapshotState
from cumulo.protocol import (
    Assignment,
    ImageFile,
    ImageRef,
    NbdLink,
    NicRef,
    SnapshotAssignment,
    VolumeAssignment,
)
from cumulo.services import image_exports, security_groups
from cumulo.services.agent_memory import HostView
from cumulo.services.context import Services, fqdn

# A host's cached assignments are rebuilt whole at least this often, whatever the notifier
# says: a write that forgot to announce itself (notify / touch) still reaches the host.
VIEW_MAX_AGE_S = 10.0
# ... and not sooner than this share of it. Each whole rebuild draws its next one at random in
# between: hosts that registered together would otherwise all be rebuilt in the same instant,
# every time (in the control-plane benchmark, 100 whole rebuilds in one burst, with every
# create of that moment queued behind them).
VIEW_MIN_AGE_SHARE = 0.5
# Built views kept per host, to answer a host that holds one of them with a delta.
RECENT_VIEWS = 3


@dataclass(frozen=True)
class Plan:
    """How to answer a host: from `base` as it is (touched empty), from `base` with the
    `touched` instances read again, or by a whole rebuild (base or touched None)."""

    content: int
    base: HostView | None
    touched: set[str] | None


def answer_plan(svc: Services, host_id: str) -> Plan:
    """Read from the notifier before any database read: a change after it outdates the view."""
    memory = svc.notifier.agents
    with memory.views_lock:
        recent = memory.views.get(host_id)
        base = recent[-1] if recent else None
    if base is None or time.monotonic() > base.rebuild_at:
        return Plan(svc.notifier.content(host_id), None, None)
    content, touched = svc.notifier.changes(host_id, base.content)
    return Plan(content, base, touched)


# The statements of every long-poll answer, built once (building one cost more than
# running it on SQLite). Columns, not ORM objects, read on the session's connection: loading
# instance and image objects was half of an answer's CPU.
_ASSIGNED = (select(InstanceRow.id, InstanceRow.name, ProjectRow.name, InstanceRow.arch,
                    InstanceRow.vcpus, InstanceRow.ram_mib, InstanceRow.disk_gib,
                    InstanceRow.state, InstanceRow.desired_power, InstanceRow.generation,
                    InstanceRow.reboot_seq, InstanceRow.reboot_done_seq, InstanceRow.user_data,
                    InstanceRow.ssh_keys, InstanceRow.zone, InstanceRow.bandwidth_mbps,
                    ImageRow.id, ImageRow.boot, ImageRow.kernel_cmdline,
                    ImageRow.disk_sha256, ImageRow.disk_size, ImageRow.kernel_sha256,
                    ImageRow.kernel_size, ImageRow.initrd_sha256, ImageRow.initrd_size,
                    InstanceRow.cpu_set)
             .join(ImageRow, ImageRow.id == InstanceRow.image_id)
             .join(ProjectRow, ProjectRow.id == InstanceRow.project_id)
             .where(InstanceRow.host_id == bindparam("host"))
             .order_by(InstanceRow.created_at, InstanceRow.id))
_ASSIGNED_AMONG = _ASSIGNED.where(InstanceRow.id.in_(bindparam("only", expanding=True)))
_NICS = (select(AddressRow.instance_id, AddressRow.network_id, AddressRow.mac, AddressRow.ip)
         .where(AddressRow.instance_id.in_(bindparam("ids", expanding=True)))
         .order_by(AddressRow.id))
_PUBLIC_IPS = (select(PublicIpRow.instance_id, PublicIpRow.ip)
               .where(PublicIpRow.instance_id.in_(bindparam("ids", expanding=True))))


def assigned(s: Session, svc: Services, host_id: str, only: set[str] | None
                 ) -> list[Assignment]:
    """The host's instances (`only` these, when given), oldest first."""
    conn = s.connection()
    if only is None:
        rows = conn.execute(_ASSIGNED, {"host": host_id}).all()
    else:
        rows = conn.execute(_ASSIGNED_AMONG, {"host": host_id, "only": list(only)}).all()
    ids = [r[0] for r in rows]
    if not ids:
        return []
    nics: dict[str, list[NicRef]] = defaultdict(list)
    for iid, network_id, mac, ip in conn.execute(_NICS, {"ids": ids}):
        nics[iid].append(NicRef(network_id=network_id, mac=mac, ip=ip))
    pub = dict(conn.execute(_PUBLIC_IPS, {"ids": ids}).all())
    ingress = security_groups.ingress_for(s, ids)
    exports = image_exports.open_exports(s, ids)
    return [
        Assignment(
            id=iid, hostname=name, project=project, arch=arch, vcpus=vcpus, ram_mib=ram_mib,
            disk_gib=disk_gib, state=state, desired_power=desired_power, generation=generation,
            reboot_seq=reboot_seq, reboot_done_seq=reboot_done_seq,
            image=ImageRef(id=image_id, boot=boot, kernel_cmdline=kernel_cmdline,
                           disk=ImageFile(sha256=disk_sha, size=disk_size),
                           kernel=ImageFile(sha256=kernel_sha, size=kernel_size)
                           if kernel_sha else None,
                           initrd=ImageFile(sha256=initrd_sha, size=initrd_size)
                           if initrd_sha else None),
            user_data_b64=base64.b64encode(user_data).decode() if user_data else None,
            ssh_public_keys=list(ssh_keys or []), fqdn=fqdn(svc, name, project, zone),
            bandwidth_mbps=bandwidth_mbps, nics=nics[iid], ingress=ingress[iid],
            public_ip=pub.get(iid), boot_write_error=svc.settings.boot_disk_write_error,
            export_id=exports.get(iid), cpu_set=list(cpu_set or []),
        )
        for (iid, name, project, arch, vcpus, ram_mib, disk_gib, state, desired_power,
             generation, reboot_seq, reboot_done_seq, user_data, ssh_keys, zone,
             bandwidth_mbps, image_id, boot, kernel_cmdline, disk_sha, disk_size, kernel_sha,
             kernel_size, initrd_sha, initrd_size, cpu_set) in rows
    ]


def build_view(s: Session, svc: Services, host_id: str, plan: Plan) -> HostView:
    base, touched = plan.base, plan.touched
    if base is None or touched is None:
        out = assigned(s, svc, host_id, None)
        vols, snaps = storage(s, svc, host_id)
        rebuild_at = time.monotonic() + VIEW_MAX_AGE_S * random.uniform(VIEW_MIN_AGE_SHARE, 1.0)
    else:
        fresh = {a.id: a for a in assigned(s, svc, host_id, touched)}
        # Kept in place (a changed one too, unless it left the host); new ones last, as
        # they are the newest.
        out = [fresh.pop(a.id) if a.id in touched else a for a in base.instances
               if a.id not in touched or a.id in fresh]
        out += fresh.values()
        vols, snaps, rebuild_at = base.volumes, base.snapshots, base.rebuild_at
    memory = svc.notifier.agents
    with memory.views_lock:
        view = HostView(name=memory.next_view_name(), content=plan.content,
                        rebuild_at=rebuild_at, instances=out,
                        network_ids=frozenset(n.network_id for a in out for n in a.nics),
                        volumes=vols, snapshots=snaps)
        recent = memory.views.setdefault(host_id, [])
        recent.append(view)
        del recent[:-RECENT_VIEWS]
    return view


def instances_since(svc: Services, host_id: str, view: HostView, have: str | None
                     ) -> tuple[list[Assignment], list[str]] | None:
    """(added or changed, removed ids) from the view the host holds (`have`) to `view`, or
    None when the host holds none this process remembers (it then gets the whole list)."""
    if not have:
        return None
    if have == view.name:
        return [], []
    memory = svc.notifier.agents
    with memory.views_lock:
        held = next((v for v in memory.views.get(host_id, []) if v.name == have), None)
    if held is None:
        return None
    before = {a.id: a for a in held.instances}
    now = {a.id for a in view.instances}
    return ([a for a in view.instances if before.get(a.id) != a],
            [i for i in before if i not in now])



# What `storage` reads, built once and read as columns: every whole rebuild of a host's view
# asks, and on most hosts there is nothing (building the statements and the ORM's read of no
# rows cost about as much as the rebuild's instances: docs/benchmarks.md, 2026-12-07).
_INCOMING = select(MigrationRow.instance_id).where(
    MigrationRow.destination_host_id == bindparam("host"), MigrationRow.active,
    MigrationRow.cold.is_(False))
_VOLUMES = (select(VolumeRow.id, VolumeRow.host_id, VolumeRow.client_host_id,
                   VolumeRow.type_name, VolumeRow.size_gib, VolumeRow.desired,
                   VolumeRow.want_instance_id, VolumeRow.device, VolumeRow.source_snapshot_id,
                   VolumeRow.generation, VolumeRow.export_name, VolumeRow.export_key,
                   VolumeRow.export_port)
            .where((VolumeRow.host_id == bindparam("host"))
                   | (VolumeRow.client_host_id == bindparam("host"))
                   | VolumeRow.attached_to.in_(_INCOMING))
            .order_by(VolumeRow.created_at, VolumeRow.id))
_UNDERLAY = select(HostRow.id, HostRow.underlay_ip).where(
    HostRow.id.in_(bindparam("ids", expanding=True)))
_SNAPSHOTS = (select(SnapshotRow.id, SnapshotRow.volume_id, SnapshotRow.state)
              .where(SnapshotRow.host_id == bindparam("host"))
              .order_by(SnapshotRow.created_at, SnapshotRow.id))


def storage(s: Session, svc: Services, host_id: str
             ) -> tuple[list[VolumeAssignment], list[SnapshotAssignment]]:
    """The volumes stored on the host (exported when attached to another host's instance),
    then those of other hosts attached to its instances (over NBD), and to the instances
    arriving here live: the incoming QEMU opens their exports too (migration_volumes)."""
    vols = []
    conn = s.connection()
    rows = conn.execute(_VOLUMES, {"host": host_id}).all()
    others = {v.host_id for v in rows if v.host_id != host_id and v.host_id}
    storage_ips = dict(conn.execute(_UNDERLAY, {"ids": list(others)}).all()) if others else {}
    for v in rows:
        vt = svc.settings.volume_type(v.type_name)
        link = (None if v.export_name is None or v.export_key is None or v.export_port is None
                else NbdLink(port=v.export_port, name=v.export_name, key=v.export_key))
        if v.host_id == host_id:
            exported = v.client_host_id is not None and v.client_host_id != host_id
            # Exported: it stays until the other host let go (a delete waits for that).
            desired = "present" if exported else v.desired
            attach_to, export, remote = (None if exported else v.want_instance_id,
                                         link if exported else None, None)
        else:
            desired, attach_to, export = "present", v.want_instance_id, None
            remote = (None if link is None else
                      link.model_copy(update={"host": storage_ips.get(v.host_id or "") or ""}))
        vols.append(VolumeAssignment(
            id=v.id, size_gib=v.size_gib, iops=vt.iops if vt else 0, mbps=vt.mbps if vt else 0,
            write_error=vt.write_error if vt else "stop", desired=desired,
            attach_to=attach_to, device=v.device,
            source_snapshot=v.source_snapshot_id if remote is None else None,
            generation=v.generation, export=export, remote=remote))
    snaps = [SnapshotAssignment(id=sid, volume_id=volume_id,
                                desired="deleted" if state == SnapshotState.DELETING
                                else "present")
             for sid, volume_id, state in conn.execute(_SNAPSHOTS, {"host": host_id})]
    return vols, snaps
