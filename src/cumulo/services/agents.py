"""The agent side of the API: what a host must run, and what it reports it runs."""

from __future__ import annotations

import base64
import random
import secrets
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

import structlog
from sqlalchemy import bindparam, delete, select, update
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
from cumulo.domain.ids import is_id
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.domain.validation import MAX_INTEGER, one_line
from cumulo.domain.volume import (
    REPORTABLE_SNAPSHOT,
    REPORTABLE_VOLUME,
    SnapshotState,
    VolumeState,
    snapshot_after_report,
    volume_after_report,
)
from cumulo.protocol import (
    Assignment,
    Assignments,
    DnsRecord,
    HostDisk,
    ImageFile,
    ImageRef,
    MigrationObservation,
    NetworkRef,
    NicRef,
    Observation,
    SnapshotAssignment,
    SnapshotObservation,
    VolumeAssignment,
    VolumeObservation,
)
from cumulo.services import (
    events,
    hosts,
    image_exports,
    migration_agents,
    security_groups,
    segments,
)
from cumulo.services.auth import require_agent
from cumulo.services.context import Principal, Services, fqdn
from cumulo.services.notifier import Notifier

DELETED = "deleted"

log = structlog.get_logger("cumulo.api")

# What a host may report (cumulo.agent.reconciler and volume_reconciler). A report is checked
# observation by observation: one this API cannot use (a state an agent of a newer version
# knows, or a broken agent's) is logged and left out, and the others are applied. A request
# that failed would be sent again at the next pass, and fail again, forever.
_INSTANCE_STATES = (frozenset(s.value for s in InstanceState) - {InstanceState.UNKNOWN.value}
                    | {DELETED})
_VOLUME_STATES = frozenset({*REPORTABLE_VOLUME, DELETED})
_SNAPSHOT_STATES = frozenset({*REPORTABLE_SNAPSHOT, DELETED})
# Reasons are shown to users as they are (`cumulo instance show`): one line, this long at most.
MAX_REASON = 500


def _host(s: Session, name: str) -> HostRow:
    row = s.scalar(select(HostRow).where(HostRow.name == name))
    if row is None:
        raise NotFound(f"host {name!r} is not registered", code="unknown_host")
    return row


def known_host_id(svc: Services, who: Principal, name: str) -> str | None:
    """The host's id if this process has seen it: no database, no worker thread."""
    require_agent(who, name)
    return svc.notifier.host_ids.get(name)


def host_id(svc: Services, who: Principal, name: str) -> str:
    known = known_host_id(svc, who, name)
    if known is not None:
        return known
    with svc.db.session() as s:
        hid = _host(s, name).id
    svc.notifier.host_ids[name] = hid
    return hid


# Per API process: network id -> (the journal version it was read at, records). Hosts that
# need a network's full list (first time, or after an API restart) share one read per change.
_records_cache: weakref.WeakKeyDictionary[Notifier, dict[str, tuple[int, list[DnsRecord]]]] = (
    weakref.WeakKeyDictionary())
_records_lock = threading.Lock()


def _full_records(s: Session, svc: Services, versions: dict[str, int]
                  ) -> dict[str, list[DnsRecord]]:
    """A DNS record for every instance on these networks, wherever it runs. `versions` were
    read from the journal before this call: the lists hold at least those changes."""
    with _records_lock:
        cache = _records_cache.setdefault(svc.notifier, {})
        out: dict[str, list[DnsRecord]] = {}
        missing: dict[str, int] = {}
        for n, version in versions.items():
            hit = cache.get(n)
            if hit is not None and hit[0] == version:
                out[n] = hit[1]
            else:
                missing[n] = version
    if not missing:
        return out
    found = segments.records(s, svc, missing)
    fresh: dict[str, list[DnsRecord]] = {n: found.get(n, []) for n in missing}
    with _records_lock:
        for n, version in missing.items():
            cache[n] = (version, fresh[n])
    return out | fresh


# Claims past this many are ignored (those networks get full lists): they ride in the query
# string of every long-poll, whose length servers limit.
MAX_DNS_CLAIMS = 100


def parse_dns_claims(claims: list[str]) -> dict[str, tuple[str, int]]:
    """`NETWORK:EPOCH:VERSION` strings (what a host holds) -> {network: (epoch, version)}.
    A malformed claim is ignored: that network's full list is sent."""
    out: dict[str, tuple[str, int]] = {}
    for c in claims[:MAX_DNS_CLAIMS]:
        parts = c.split(":")
        if len(parts) == 3 and parts[2].isdigit() and len(parts[2]) < 19:
            out[parts[0]] = (parts[1], int(parts[2]))
    return out


def _networks(s: Session, svc: Services, host_id: str, network_ids: set[str],
              claims: dict[str, tuple[str, int]]) -> list[NetworkRef]:
    """The host's networks, each with its DNS records: only the changes since what the host
    claims to hold when the journal can say, else every record (see dns_journal)."""
    journal = svc.notifier.dns
    journal.subscribe(host_id, network_ids)  # first: a change after this wakes the host
    deltas = {}
    full: dict[str, int] = {}
    for n in network_ids:
        claim = claims.get(n)
        delta = journal.since(n, *claim) if claim else None
        if delta is None:
            full[n] = journal.version(n)  # read before the query: never stale
        else:
            deltas[n] = delta
    records = _full_records(s, svc, full) if full else {}
    out = []
    for net in _network_facts(s, network_ids):
        d = deltas.get(net.id)
        # Every field given: model_construct inspects a default factory's signature per call.
        out.append(NetworkRef.model_construct(
            id=net.id, vni=net.vni, project=net.project, cidr=net.cidr, gateway=net.gateway,
            dns_domain=f"{net.project}.{net.zone}.{svc.settings.cloud_domain}",
            records_epoch=journal.epoch,
            records=d.added if d else records.get(net.id, []),
            records_removed=d.removed if d else [],
            records_version=d.version if d else full[net.id],
            records_since=claims[net.id][1] if d else None))
    return out


@dataclass(frozen=True)
class _NetworkFacts:
    id: str
    project: str
    zone: str
    cidr: str
    gateway: str
    vni: int


# Network id -> its facts: none of them ever changes (ids are never reused), so every API
# process keeps those it has read. Bounded: emptied when it grows past MAX_NETWORK_FACTS.
_facts: dict[str, _NetworkFacts] = {}
_facts_lock = threading.Lock()
MAX_NETWORK_FACTS = 100_000


def _network_facts(s: Session, network_ids: set[str]) -> list[_NetworkFacts]:
    """The facts of these networks (those that exist), ordered by id."""
    with _facts_lock:
        known = {n: _facts[n] for n in network_ids if n in _facts}
    missing = network_ids - known.keys()
    if missing:
        for net, project in s.execute(select(NetworkRow, ProjectRow.name)
                                      .join(ProjectRow, ProjectRow.id == NetworkRow.project_id)
                                      .where(NetworkRow.id.in_(missing))):
            known[net.id] = _NetworkFacts(id=net.id, project=project, zone=net.zone,
                                          cidr=net.cidr, gateway=net.gateway, vni=net.vni)
        with _facts_lock:
            if len(_facts) > MAX_NETWORK_FACTS:
                _facts.clear()
            _facts.update(known)
    return [known[n] for n in sorted(known)]


def _storage(s: Session, svc: Services, host_id: str
             ) -> tuple[list[VolumeAssignment], list[SnapshotAssignment]]:
    vols = []
    for v in s.scalars(select(VolumeRow).where(VolumeRow.host_id == host_id)
                       .order_by(VolumeRow.created_at, VolumeRow.id)):
        vt = svc.settings.volume_type(v.type_name)
        vols.append(VolumeAssignment(
            id=v.id, size_gib=v.size_gib, iops=vt.iops if vt else 0, mbps=vt.mbps if vt else 0,
            write_error=vt.write_error if vt else "stop", desired=v.desired,
            attach_to=v.want_instance_id, device=v.device,
            source_snapshot=v.source_snapshot_id, generation=v.generation))
    snaps = [SnapshotAssignment(id=sn.id, volume_id=sn.volume_id,
                                desired="deleted" if sn.state == SnapshotState.DELETING
                                else "present")
             for sn in s.scalars(select(SnapshotRow).where(SnapshotRow.host_id == host_id)
                                 .order_by(SnapshotRow.created_at, SnapshotRow.id))]
    return vols, snaps


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
class _HostView:
    """What a host is assigned, but its networks' DNS records (those are per claim)."""

    name: str  # EPOCH:SERIAL, unique per build: what the host claims back (`have`)
    content: int  # the host's content version (Notifier.content) read before the build
    rebuild_at: float  # time.monotonic() after which the next answer rebuilds it whole
    instances: list[Assignment]
    network_ids: frozenset[str]
    volumes: list[VolumeAssignment]
    snapshots: list[SnapshotAssignment]


class _Views:
    """The views built by one API process (one per Notifier): host id -> recent views, the
    newest last. Serials are comparable within the process only, hence the epoch."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.serial = 0
        self.hosts: dict[str, list[_HostView]] = {}


# Most wake-ups of a busy cloud are DNS-only (another host's instance joined a network): they
# reuse the host's view, and a host that holds it gets no instance at all. Most of the others
# changed one instance (a create, a state report): only that one is read again.
_views: weakref.WeakKeyDictionary[Notifier, _Views] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def _process_views(svc: Services) -> _Views:
    with _views_lock:
        views = _views.get(svc.notifier)
        if views is None:
            views = _views[svc.notifier] = _Views()
        return views


@dataclass(frozen=True)
class _Plan:
    """How to answer a host: from `base` as it is (touched empty), from `base` with the
    `touched` instances read again, or by a whole rebuild (base or touched None)."""

    content: int
    base: _HostView | None
    touched: set[str] | None


def _plan(svc: Services, host_id: str) -> _Plan:
    """Read from the notifier before any database read: a change after it outdates the view."""
    views = _process_views(svc)
    with _views_lock:
        recent = views.hosts.get(host_id)
        base = recent[-1] if recent else None
    if base is None or time.monotonic() > base.rebuild_at:
        return _Plan(svc.notifier.content(host_id), None, None)
    content, touched = svc.notifier.changes(host_id, base.content)
    return _Plan(content, base, touched)


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


def assigned(s: Session, svc: Services, host_id: str, only: set[str]) -> list[Assignment]:
    """These instances of the host, as it is assigned them."""
    return _assignments(s, svc, host_id, only)


def _assignments(s: Session, svc: Services, host_id: str, only: set[str] | None
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


def _build_view(s: Session, svc: Services, host_id: str, plan: _Plan) -> _HostView:
    base, touched = plan.base, plan.touched
    if base is None or touched is None:
        out = _assignments(s, svc, host_id, None)
        vols, snaps = _storage(s, svc, host_id)
        rebuild_at = time.monotonic() + VIEW_MAX_AGE_S * random.uniform(VIEW_MIN_AGE_SHARE, 1.0)
    else:
        fresh = {a.id: a for a in _assignments(s, svc, host_id, touched)}
        # Kept in place (a changed one too, unless it left the host); new ones last, as
        # they are the newest.
        out = [fresh.pop(a.id) if a.id in touched else a for a in base.instances
               if a.id not in touched or a.id in fresh]
        out += fresh.values()
        vols, snaps, rebuild_at = base.volumes, base.snapshots, base.rebuild_at
    views = _process_views(svc)
    with _views_lock:
        views.serial += 1
        view = _HostView(name=f"{views.epoch}:{views.serial}", content=plan.content,
                         rebuild_at=rebuild_at, instances=out,
                         network_ids=frozenset(n.network_id for a in out for n in a.nics),
                         volumes=vols, snapshots=snaps)
        recent = views.hosts.setdefault(host_id, [])
        recent.append(view)
        del recent[:-RECENT_VIEWS]
    return view


def _instances_since(svc: Services, host_id: str, view: _HostView, have: str | None
                     ) -> tuple[list[Assignment], list[str]] | None:
    """(added or changed, removed ids) from the view the host holds (`have`) to `view`, or
    None when the host holds none this process remembers (it then gets the whole list)."""
    if not have:
        return None
    if have == view.name:
        return [], []
    views = _process_views(svc)
    with _views_lock:
        held = next((v for v in views.hosts.get(host_id, []) if v.name == have), None)
    if held is None:
        return None
    before = {a.id: a for a in held.instances}
    now = {a.id for a in view.instances}
    return ([a for a in view.instances if before.get(a.id) != a],
            [i for i in before if i not in now])


def assignments(svc: Services, who: Principal, name: str,
                dns_claims: list[str] | None = None, have: str | None = None) -> Assignments:
    """Everything the host must converge to (the long-poll answer, without its version).
    `dns_claims` (NETWORK:EPOCH:VERSION) say which DNS records the host already holds, and
    `have` (a former answer's `view`) which instance list: only the changes come back."""
    hid = host_id(svc, who, name)
    plan = _plan(svc, hid)
    with svc.db.session() as s:
        hosts.heartbeat(s, svc, hid)
        if plan.base is not None and plan.touched == set():
            view = plan.base  # nothing it is assigned changed since
        else:
            view = _build_view(s, svc, hid, plan)
        moving = migration_agents.for_host(s, svc, hid)
        network_ids = set(view.network_ids)
        if any(m.role == "destination" for m in moving):
            network_ids |= migration_agents.network_ids(s, hid)
        nets = _networks(s, svc, hid, network_ids, parse_dns_claims(dns_claims or []))
    delta = _instances_since(svc, hid, view, have)
    if delta is None:
        return Assignments(version=0, instances=list(view.instances), networks=nets,
                           volumes=list(view.volumes), snapshots=list(view.snapshots),
                           view=view.name, migrations=moving)
    return Assignments(version=0, instances=delta[0], networks=nets,
                       volumes=list(view.volumes), snapshots=list(view.snapshots),
                       view=view.name, instances_since=have, instances_removed=delta[1],
                       migrations=moving)


# What a report and a deletion run, built once. Columns and statements on the session's
# connection rather than ORM objects and a flush: the report was the agent protocol's dearest
# request after the long-poll answer.
_NIC_KEYS = select(AddressRow.network_id, AddressRow.mac).where(
    AddressRow.instance_id == bindparam("iid"))
_FORGET = (
    delete(AddressRow).where(AddressRow.instance_id == bindparam("iid")),
    delete(PublicIpRow).where(PublicIpRow.instance_id == bindparam("iid"), PublicIpRow.auto),
    # An allocated (not auto) public IP stays with the project.
    update(PublicIpRow).where(PublicIpRow.instance_id == bindparam("iid"))
    .values(instance_id=None),
    delete(InstanceGroupRow).where(InstanceGroupRow.instance_id == bindparam("iid")),
    delete(InstanceRow).where(InstanceRow.id == bindparam("iid")),
)


def _forget(s: Session, instance_id: str) -> list[tuple[str, str]]:
    """Remove a deleted instance and release what it held.
    Returns its (network id, MAC) pairs: those DNS records are gone."""
    conn = s.connection()
    nics = [(n, m) for n, m in conn.execute(_NIC_KEYS, {"iid": instance_id})]
    for statement in _FORGET:
        conn.execute(statement, {"iid": instance_id})
    return nics


def _report_storage(s: Session, host_id: str, volumes: list[VolumeObservation],
                    snapshots: list[SnapshotObservation]) -> list[events.Event]:
    """Apply the storage observations; the events they make."""
    out: list[events.Event] = []

    def event(row: VolumeRow | SnapshotRow, kind: str, detail: str = "") -> None:
        rtype = "volume" if isinstance(row, VolumeRow) else "snapshot"
        out.append(events.Event(row.project_id, rtype, row.id, row.name, kind, "agent", detail))

    vrows = {r.id: r for r in s.scalars(select(VolumeRow).where(
        VolumeRow.id.in_([v.id for v in volumes]), VolumeRow.host_id == host_id))}
    for obs in volumes:
        row = vrows.get(obs.id)
        if row is None or obs.generation < row.generation:
            continue
        if obs.state == DELETED:
            if row.desired == DELETED:
                event(row, "deleted")
                s.delete(row)
            continue
        reason = one_line(obs.reason, MAX_REASON)
        after = volume_after_report(
            reported=VolumeState(obs.state), reason=reason, being_deleted=row.desired == DELETED,
            stored=row.state, stored_reason=row.state_reason, attached_before=row.attached_to,
            attached_now=obs.attached_to, device=row.device)
        for kind, detail in after.events:
            event(row, kind, detail)
        row.state, row.attached_to, row.state_reason = after.state, obs.attached_to, reason
    srows = {r.id: r for r in s.scalars(select(SnapshotRow).where(
        SnapshotRow.id.in_([x.id for x in snapshots]), SnapshotRow.host_id == host_id))}
    for sobs in snapshots:
        srow = srows.get(sobs.id)
        if srow is None:
            continue
        if sobs.state == DELETED:
            if srow.state == SnapshotState.DELETING:
                event(srow, "deleted")
                s.delete(srow)
            continue
        store, told = snapshot_after_report(srow.state, SnapshotState(sobs.state))
        if told is not None:
            event(srow, told, one_line(sobs.reason, MAX_REASON))
        if store:
            srow.state, srow.state_reason = sobs.state, one_line(sobs.reason, MAX_REASON)
            srow.size_gib = sobs.size_gib or srow.size_gib
    return out


_REPORTED = (select(InstanceRow.id, InstanceRow.generation, InstanceRow.state,
                    InstanceRow.state_reason, InstanceRow.desired_power,
                    InstanceRow.reboot_seq, InstanceRow.reboot_done_seq,
                    InstanceRow.project_id, InstanceRow.name)
             .where(InstanceRow.id.in_(bindparam("ids", expanding=True)),
                    InstanceRow.host_id == bindparam("host")))
# Guarded by the generation the report was checked against: a user's request that committed
# in between (it bumps the generation) is not undone.
_APPLY = (update(InstanceRow)
          .where(InstanceRow.id == bindparam("iid"), InstanceRow.generation == bindparam("gen"))
          .values(state=bindparam("new_state"), state_reason=bindparam("reason"),
                  desired_power=bindparam("desired"), reboot_done_seq=bindparam("done_seq")))


def report(svc: Services, who: Principal, name: str, observations: list[Observation],
           volumes: list[VolumeObservation] | None = None,
           snapshots: list[SnapshotObservation] | None = None,
           disk: HostDisk | None = None,
           migrations: list[MigrationObservation] | None = None) -> None:
    """Apply what the agent saw. Stale reports (older generation) cannot undo a newer request."""
    reporter = host_id(svc, who, name)
    observations = [o for o in observations
                    if _usable(name, o.id, o.state, _INSTANCE_STATES)]
    volumes = [v for v in volumes or []
               if _usable(name, v.id, v.state, _VOLUME_STATES, v.size_gib, v.attached_to)]
    snapshots = [x for x in snapshots or []
                 if _usable(name, x.id, x.state, _SNAPSHOT_STATES, x.size_gib)]
    gone: list[tuple[str, str]] = []  # (network id, MAC) of deleted instances
    refresh = bool(volumes or snapshots)  # does the reporter need the new view at once?
    changed: set[str] = set()  # instances whose assignment changed
    with svc.db.session() as s:
        hosts.heartbeat(s, svc, reporter)
        if disk is not None:
            hosts.record_disk(s, reporter, disk)
        conn = s.connection()
        rows = {r[0]: r for r in conn.execute(
            _REPORTED, {"ids": [o.id for o in observations], "host": reporter})}
        writes: list[dict[str, object]] = []
        happened: list[events.Event] = []  # written with the changes: one statement
        for obs in observations:
            row = rows.get(obs.id)
            if row is None or obs.generation < row.generation:
                continue
            (iid, generation, old_state, old_reason, desired, reboot_seq, done_seq,
             project_id, vm_name) = row
            if obs.state == DELETED:
                if desired == DesiredPower.DELETED.value:
                    gone += _forget(s, iid)
                    changed.add(iid)
                    refresh = True
                    happened.append(events.Event(project_id, "instance", iid, vm_name,
                                                 "deleted", "agent"))
                continue
            state = InstanceState(obs.state)
            if obs.reboot_done_seq is not None and obs.reboot_done_seq > done_seq:
                done_seq = obs.reboot_done_seq
                changed.add(iid)
                refresh = True
            new_state, reason = old_state, old_reason
            if desired != DesiredPower.DELETED.value:  # else "deleting" until reported gone
                if state is InstanceState.RUNNING and done_seq < reboot_seq:
                    state = InstanceState.REBOOTING
                if obs.guest_initiated and state is InstanceState.STOPPED:
                    desired = DesiredPower.STOPPED.value
                    changed.add(iid)
                    refresh = True
                said = one_line(obs.reason, MAX_REASON)
                if old_state != state.value or old_reason != said:
                    refresh |= _agent_decides_on(old_state) or _agent_decides_on(state.value)
                    new_state, reason = state.value, said
                    changed.add(iid)
                    what = events.instance_transition(old_state, new_state, said,
                                                      obs.guest_initiated)
                    if what is not None:
                        happened.append(events.Event(project_id, "instance", iid, vm_name,
                                                     *what))
            if iid in changed:
                writes.append({"iid": iid, "gen": generation, "new_state": new_state,
                               "reason": reason, "desired": desired, "done_seq": done_seq})
        if writes:
            conn.execute(_APPLY, writes)
        if volumes or snapshots:
            happened += _report_storage(s, reporter, volumes, snapshots)
        events.add(s, happened)
        wake, moved = (migration_agents.apply(s, svc, reporter, migrations) if migrations
                       else (set(), set()))
    migration_agents.after_commit(svc, wake, moved)  # the reporter too: its part changed
    for net_id, mac in gone:
        svc.notifier.dns_changed(net_id, removed=[mac])
    # The reporting agent decides from the API's view of each instance (e.g. a VM shown in
    # error is not restarted): when its report changed something its decisions read, hand it
    # the new view. Other changes (pending -> running, the bulk of them) need no extra fetch.
    # At once, not coalesced: within one observe period the agent would act on the old view
    # again (e.g. reboot a second time).
    if refresh:
        # A storage report may remove volumes or snapshots: the whole view is read again.
        svc.notifier.notify(reporter, None if volumes or snapshots or moved else changed)
    elif changed:
        svc.notifier.touch(reporter, changed)  # its next answer shows them; no wake-up


def _usable(host: str, ref: str, state: str, states: Collection[str], size: int = 0,
            attached_to: str | None = None) -> bool:
    """Whether an observation can be applied (see _INSTANCE_STATES); logged when not."""
    if (is_id(ref) and state in states and 0 <= size <= MAX_INTEGER
            and (attached_to is None or is_id(attached_to))):
        return True
    log.warning("observation_ignored", host=host, id=one_line(ref, 40),
                state=one_line(state, 40), size=size,
                attached_to=None if attached_to is None else one_line(attached_to, 40))
    return False


def _agent_decides_on(state: str) -> bool:
    """States the agent's decisions read (cumulo.agent.decide): a crashed VM is started again
    only while the API shows it starting; error and rebooting are shown to be kept."""
    return state in (InstanceState.STARTING.value, InstanceState.ERROR.value,
                     InstanceState.REBOOTING.value)
