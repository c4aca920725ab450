"""The agent side of the API: what a host must run, and what it reports it runs."""

from __future__ import annotations

import base64
import threading
import weakref
from collections import defaultdict

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    AddressRow,
    HostRow,
    ImageRow,
    InstanceGroupRow,
    InstanceRow,
    NetworkRow,
    ProjectRow,
    PublicIpRow,
    SnapshotRow,
    VolumeRow,
)
from cumulo.domain.errors import NotFound
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.protocol import (
    Assignment,
    Assignments,
    DnsRecord,
    ImageRef,
    NetworkRef,
    NicRef,
    Observation,
    SnapshotAssignment,
    SnapshotObservation,
    VolumeAssignment,
    VolumeObservation,
)
from cumulo.services import hosts, security_groups
from cumulo.services.auth import require_agent
from cumulo.services.context import Principal, Services
from cumulo.services.instances import fqdn, network_hosts
from cumulo.services.notifier import Notifier

DELETED = "deleted"


def _host(s: Session, name: str) -> HostRow:
    row = s.scalar(select(HostRow).where(HostRow.name == name))
    if row is None:
        raise NotFound(f"host {name!r} is not registered", code="unknown_host")
    return row


def host_id(svc: Services, who: Principal, name: str) -> str:
    require_agent(who, name)
    with svc.db.session() as s:
        return _host(s, name).id


# Per API process: network id -> (the notifier's network version it was read at, records).
# Every agent on a network receives the same records; they are read once per change.
_records_cache: weakref.WeakKeyDictionary[Notifier, dict[str, tuple[int, list[DnsRecord]]]] = (
    weakref.WeakKeyDictionary())
_records_lock = threading.Lock()


def _records(s: Session, svc: Services, network_ids: set[str]) -> dict[str, list[DnsRecord]]:
    """A DNS record for every instance on these networks, wherever it runs."""
    with _records_lock:
        cache = _records_cache.setdefault(svc.notifier, {})
        out: dict[str, list[DnsRecord]] = {}
        missing: dict[str, int] = {}
        for n in network_ids:
            version = svc.notifier.network_version(n)  # read before the query: never stale
            hit = cache.get(n)
            if hit is not None and hit[0] == version:
                out[n] = hit[1]
            else:
                missing[n] = version
    if not missing:
        return out
    fresh: dict[str, list[DnsRecord]] = {n: [] for n in missing}
    rows = s.execute(
        select(AddressRow.network_id, AddressRow.ip, AddressRow.mac, InstanceRow.name,
               InstanceRow.zone, ProjectRow.name)
        .join(InstanceRow, InstanceRow.id == AddressRow.instance_id)
        .join(ProjectRow, ProjectRow.id == InstanceRow.project_id)
        .where(AddressRow.network_id.in_(missing))
        .order_by(AddressRow.ip)
    )
    for net_id, ip, mac, name, zone, project in rows:
        fresh[net_id].append(DnsRecord.model_construct(
            hostname=name, fqdn=fqdn(svc, name, project, zone), ip=ip, mac=mac))
    with _records_lock:
        for n, version in missing.items():
            cache[n] = (version, fresh[n])
    return out | fresh


def _networks(s: Session, svc: Services, network_ids: set[str]) -> list[NetworkRef]:
    """The networks with a DNS record for every instance on them, wherever it runs."""
    if not network_ids:
        return []
    records = _records(s, svc, network_ids)
    out = []
    for net, project in s.execute(select(NetworkRow, ProjectRow.name)
                                  .join(ProjectRow, ProjectRow.id == NetworkRow.project_id)
                                  .where(NetworkRow.id.in_(network_ids))
                                  .order_by(NetworkRow.id)):
        out.append(NetworkRef.model_construct(
            id=net.id, project=project, cidr=net.cidr, gateway=net.gateway,
            dns_domain=f"{project}.{net.zone}.{svc.settings.cloud_domain}",
            records=records.get(net.id, [])))
    return out


def _storage(s: Session, svc: Services, host_id: str
             ) -> tuple[list[VolumeAssignment], list[SnapshotAssignment]]:
    vols = []
    for v in s.scalars(select(VolumeRow).where(VolumeRow.host_id == host_id)
                       .order_by(VolumeRow.created_at, VolumeRow.id)):
        vt = svc.settings.volume_type(v.type_name)
        vols.append(VolumeAssignment(
            id=v.id, size_gib=v.size_gib, iops=vt.iops if vt else 0, mbps=vt.mbps if vt else 0,
            desired=v.desired, attach_to=v.want_instance_id, device=v.device,
            source_snapshot=v.source_snapshot_id, generation=v.generation))
    snaps = [SnapshotAssignment(id=sn.id, volume_id=sn.volume_id,
                                desired="deleted" if sn.state == "deleting" else "present")
             for sn in s.scalars(select(SnapshotRow).where(SnapshotRow.host_id == host_id)
                                 .order_by(SnapshotRow.created_at, SnapshotRow.id))]
    return vols, snaps


def assignments(svc: Services, who: Principal, name: str) -> Assignments:
    """Everything the host must converge to (the long-poll answer, without its version)."""
    require_agent(who, name)
    with svc.db.session() as s:
        host = _host(s, name)
        hosts.heartbeat(s, host)
        rows = s.execute(
            select(InstanceRow, ImageRow, ProjectRow.name)
            .join(ImageRow, ImageRow.id == InstanceRow.image_id)
            .join(ProjectRow, ProjectRow.id == InstanceRow.project_id)
            .where(InstanceRow.host_id == host.id)
        ).all()
        ids = [i.id for i, _, _ in rows]
        nics: dict[str, list[NicRef]] = defaultdict(list)
        for a in s.scalars(select(AddressRow).where(AddressRow.instance_id.in_(ids))
                           .order_by(AddressRow.id)):
            nics[a.instance_id].append(NicRef(network_id=a.network_id, mac=a.mac, ip=a.ip))
        pub = dict(s.execute(select(PublicIpRow.instance_id, PublicIpRow.ip)
                             .where(PublicIpRow.instance_id.in_(ids))).all())
        ingress = security_groups.ingress_for(s, ids)
        out = [
            Assignment(
                id=i.id, hostname=i.name, project=pname, arch=i.arch, vcpus=i.vcpus,
                ram_mib=i.ram_mib, disk_gib=i.disk_gib, state=i.state,
                desired_power=i.desired_power, generation=i.generation,
                reboot_seq=i.reboot_seq, reboot_done_seq=i.reboot_done_seq,
                image=ImageRef(id=img.id, boot=img.boot, disk_path=img.disk_path,
                               kernel_path=img.kernel_path, initrd_path=img.initrd_path,
                               kernel_cmdline=img.kernel_cmdline),
                user_data_b64=base64.b64encode(i.user_data).decode() if i.user_data else None,
                ssh_public_keys=list(i.ssh_keys or []), fqdn=fqdn(svc, i.name, pname, i.zone),
                bandwidth_mbps=i.bandwidth_mbps, nics=nics[i.id], ingress=ingress[i.id],
                public_ip=pub.get(i.id),
            )
            for i, img, pname in rows
        ]
        nets = _networks(s, svc, {n.network_id for a in out for n in a.nics})
        vols, snaps = _storage(s, svc, host.id)
        return Assignments(version=0, instances=out, networks=nets, volumes=vols,
                           snapshots=snaps)


def _forget(s: Session, row: InstanceRow) -> tuple[set[str], set[str]]:
    """Remove a deleted instance and release what it held.
    Returns (its networks, the hosts to wake: their DNS records change)."""
    nets = list(s.scalars(select(AddressRow.network_id).where(AddressRow.instance_id == row.id)))
    s.execute(delete(AddressRow).where(AddressRow.instance_id == row.id))
    s.execute(delete(PublicIpRow).where(PublicIpRow.instance_id == row.id, PublicIpRow.auto))
    for pip in s.scalars(select(PublicIpRow).where(PublicIpRow.instance_id == row.id)):
        pip.instance_id = None  # an allocated (not auto) public IP stays with the project
    s.execute(delete(InstanceGroupRow).where(InstanceGroupRow.instance_id == row.id))
    s.delete(row)
    s.flush()
    return set(nets), network_hosts(s, nets)


def _report_storage(s: Session, host_id: str, volumes: list[VolumeObservation],
                    snapshots: list[SnapshotObservation]) -> None:
    vrows = {r.id: r for r in s.scalars(select(VolumeRow).where(
        VolumeRow.id.in_([v.id for v in volumes]), VolumeRow.host_id == host_id))}
    for obs in volumes:
        row = vrows.get(obs.id)
        if row is None or obs.generation < row.generation:
            continue
        if obs.state == DELETED:
            if row.desired == "deleted":
                s.delete(row)
            continue
        row.state, row.state_reason, row.attached_to = obs.state, obs.reason, obs.attached_to
        if row.desired == "deleted" and obs.state != "error":
            row.state = "deleting"
    srows = {r.id: r for r in s.scalars(select(SnapshotRow).where(
        SnapshotRow.id.in_([x.id for x in snapshots]), SnapshotRow.host_id == host_id))}
    for sobs in snapshots:
        srow = srows.get(sobs.id)
        if srow is None:
            continue
        if sobs.state == DELETED:
            if srow.state == "deleting":
                s.delete(srow)
            continue
        if srow.state != "deleting":
            srow.state, srow.state_reason = sobs.state, sobs.reason
            srow.size_gib = sobs.size_gib or srow.size_gib


def report(svc: Services, who: Principal, name: str, observations: list[Observation],
           volumes: list[VolumeObservation] | None = None,
           snapshots: list[SnapshotObservation] | None = None) -> None:
    """Apply what the agent saw. Stale reports (older generation) cannot undo a newer request."""
    require_agent(who, name)
    wake: set[str] = set()
    nets: set[str] = set()
    with svc.db.session() as s:
        host = _host(s, name)
        hosts.heartbeat(s, host)
        ids = [o.id for o in observations]
        rows = {r.id: r for r in s.scalars(
            select(InstanceRow).where(InstanceRow.id.in_(ids), InstanceRow.host_id == host.id))}
        for obs in observations:
            row = rows.get(obs.id)
            if row is None or obs.generation < row.generation:
                continue
            if obs.state == DELETED:
                if row.desired_power == DesiredPower.DELETED.value:
                    gone_from, hosts_to_wake = _forget(s, row)
                    nets |= gone_from
                    wake |= hosts_to_wake
                continue
            state = InstanceState(obs.state)
            if obs.reboot_done_seq is not None:
                row.reboot_done_seq = max(row.reboot_done_seq, obs.reboot_done_seq)
            if row.desired_power == DesiredPower.DELETED.value:
                continue  # stays "deleting" until the agent reports it gone
            if state is InstanceState.RUNNING and row.reboot_done_seq < row.reboot_seq:
                state = InstanceState.REBOOTING
            if obs.guest_initiated and state is InstanceState.STOPPED:
                row.desired_power = DesiredPower.STOPPED.value
            if row.state != state.value or row.state_reason != obs.reason:
                row.state, row.state_reason = state.value, obs.reason
        if volumes or snapshots:
            _report_storage(s, host.id, volumes or [], snapshots or [])
        reporter = host.id
    svc.notifier.network_changed(nets)
    svc.notifier.notify_soon(wake)  # their DNS records changed
    # The reporting agent decides from the API's view of each instance (e.g. a VM shown in
    # error is not restarted): hand it the view its own report just changed.
    svc.notifier.notify_soon({reporter})
