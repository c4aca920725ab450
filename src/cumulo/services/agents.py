"""The agent side of the API: what a host must run (its long-poll answer, built by
agent_views and agent_networks), and what it reports it runs."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    AddressRow,
    HostRow,
    InstanceGroupRow,
    InstanceRow,
    PublicIpRow,
    SnapshotRow,
    VolumeRow,
)
from cumulo.domain.errors import NotFound
from cumulo.domain.ids import is_id
from cumulo.domain.instance import DesiredPower, InstanceState, Recorded, Seen, apply_report
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
    Assignments,
    HostDisk,
    MigrationObservation,
    Observation,
    SnapshotObservation,
    VolumeObservation,
)
from cumulo.services import (
    agent_networks,
    agent_views,
    baremetal_ports,
    events,
    hosts,
    metering,
    migration_agents,
    prices,
)
from cumulo.services.auth import require_agent
from cumulo.services.context import Principal, Services

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


def assignments(svc: Services, who: Principal, name: str,
                dns_claims: list[str] | None = None, have: str | None = None) -> Assignments:
    """Everything the host must converge to (the long-poll answer, without its version).
    `dns_claims` (NETWORK:EPOCH:VERSION) say which DNS records the host already holds, and
    `have` (a former answer's `view`) which instance list: only the changes come back."""
    hid = host_id(svc, who, name)
    plan = agent_views.answer_plan(svc, hid)
    with svc.db.session() as s:
        hosts.heartbeat(s, svc, hid)
        if plan.base is not None and plan.touched == set():
            view = plan.base  # nothing it is assigned changed since
        else:
            view = agent_views.build_view(s, svc, hid, plan)
        moving = migration_agents.for_host(s, svc, hid)
        network_ids = set(view.network_ids)
        ports = baremetal_ports.for_host(s, name)  # few: read whole at every answer
        network_ids |= {nic.network_id for p in ports for nic in p.nics}
        if any(m.role == "destination" for m in moving):  # it serves arriving VMs' networks
            network_ids |= migration_agents.network_ids(s, hid)
        nets = agent_networks.networks(s, svc, hid, network_ids,
                                       agent_networks.parse_dns_claims(dns_claims or []))
        vols, snaps = view.volumes, view.snapshots
        if any(m.role == "destination" and not m.cold for m in moving):
            # Read again: an arriving VM's volumes are no instance's part of the view, and
            # its incoming QEMU opens them (agent_views.storage).
            vols, snaps = agent_views.storage(s, svc, hid)
    delta = agent_views.instances_since(svc, hid, view, have)
    if delta is None:
        return Assignments(version=0, instances=list(view.instances), networks=nets,
                           volumes=list(vols), snapshots=list(snaps),
                           view=view.name, migrations=moving, ports=ports)
    return Assignments(version=0, instances=delta[0], networks=nets,
                       volumes=list(vols), snapshots=list(snaps),
                       view=view.name, instances_since=have, instances_removed=delta[1],
                       migrations=moving, ports=ports)


# What a report and a deletion run, built once. Columns and statements on the session's
# connection rather than ORM objects and a flush: the report was the agent protocol's dearest
# request after the long-poll answer.
_NIC_KEYS = select(AddressRow.network_id, AddressRow.mac).where(
    AddressRow.instance_id == bindparam("iid"))
_AUTO_IPS = select(PublicIpRow.id).where(PublicIpRow.instance_id == bindparam("iid"),
                                         PublicIpRow.auto)
_FORGET = (
    delete(AddressRow).where(AddressRow.instance_id == bindparam("iid")),
    delete(PublicIpRow).where(PublicIpRow.instance_id == bindparam("iid"), PublicIpRow.auto),
    # An allocated (not auto) public IP stays with the project.
    update(PublicIpRow).where(PublicIpRow.instance_id == bindparam("iid"))
    .values(instance_id=None),
    delete(InstanceGroupRow).where(InstanceGroupRow.instance_id == bindparam("iid")),
    delete(InstanceRow).where(InstanceRow.id == bindparam("iid")),
)


def forget_instance(s: Session, at: datetime, instance_id: str) -> list[tuple[str, str]]:
    """Remove a deleted instance and release what it held; its metering (and its automatic
    public IP's) ends at `at`. Returns its (network id, MAC) pairs: those DNS records are
    gone."""
    conn = s.connection()
    nics = [(n, m) for n, m in conn.execute(_NIC_KEYS, {"iid": instance_id})]
    metering.end(s, at, [instance_id, *conn.scalars(_AUTO_IPS, {"iid": instance_id})])
    for statement in _FORGET:
        conn.execute(statement, {"iid": instance_id})
    return nics


def _report_storage(s: Session, svc: Services, at: datetime, host_id: str,
                    volumes: list[VolumeObservation], snapshots: list[SnapshotObservation],
                    wake: set[str]) -> list[events.Event]:
    """Apply the storage observations; the events they make (and the metering). The hosts
    whose assignments this changed are added to `wake`.

    A volume attached over NBD to an instance of another host: that host (the client) tells
    its state and attachment; the storage host only its failures (to export it). Once the
    client let go of a volume no longer asked of it, the export is dropped."""
    out: list[events.Event] = []

    def event(row: VolumeRow | SnapshotRow, kind: str, detail: str = "") -> None:
        rtype = "volume" if isinstance(row, VolumeRow) else "snapshot"
        out.append(events.Event(row.project_id, rtype, row.id, row.name, kind, "agent", detail))

    vrows = {r.id: r for r in s.scalars(select(VolumeRow).where(
        VolumeRow.id.in_([v.id for v in volumes]),
        (VolumeRow.host_id == host_id) | (VolumeRow.client_host_id == host_id)))}
    for obs in volumes:
        row = vrows.get(obs.id)
        if row is None or obs.generation < row.generation:
            continue
        remote = row.client_host_id is not None and row.client_host_id != row.host_id
        if remote and host_id == row.host_id and obs.state != VolumeState.ERROR:
            continue  # the client host tells how the attachment is
        if remote and host_id == row.client_host_id and obs.state == DELETED:
            continue
        if obs.state == DELETED:
            if row.desired == DELETED:
                event(row, "deleted")
                metering.end(s, at, [row.id])
                s.delete(row)
            continue
        reason = one_line(obs.reason, MAX_REASON)
        after = volume_after_report(
            reported=VolumeState(obs.state), reason=reason, being_deleted=row.desired == DELETED,
            stored=row.state, stored_reason=row.state_reason, attached_before=row.attached_to,
            attached_now=obs.attached_to, device=row.device)
        for kind, detail in after.events:
            event(row, kind, detail)
        if remote and host_id == row.host_id:  # the export failed: say so, keep the rest
            row.state, row.state_reason = after.state, reason
            continue
        row.state, row.attached_to, row.state_reason = after.state, obs.attached_to, reason
        if remote and obs.attached_to is None and row.want_instance_id is None \
                and obs.state != VolumeState.ERROR:
            row.client_host_id = row.export_name = row.export_key = None
            row.export_port = None
            if row.desired == DELETED:
                row.state = VolumeState.DELETING
            wake |= {h for h in (row.host_id, host_id) if h}
    srows = {r.id: r for r in s.scalars(select(SnapshotRow).where(
        SnapshotRow.id.in_([x.id for x in snapshots]), SnapshotRow.host_id == host_id))}
    for sobs in snapshots:
        srow = srows.get(sobs.id)
        if srow is None:
            continue
        if sobs.state == DELETED:
            if srow.state == SnapshotState.DELETING:
                event(srow, "deleted")
                metering.end(s, at, [srow.id])
                s.delete(srow)
            continue
        store, told = snapshot_after_report(srow.state, SnapshotState(sobs.state))
        if told is not None:
            event(srow, told, one_line(sobs.reason, MAX_REASON))
        if store:
            srow.state, srow.state_reason = sobs.state, one_line(sobs.reason, MAX_REASON)
            if sobs.size_gib and sobs.size_gib != srow.size_gib:
                srow.size_gib = sobs.size_gib
                metering.sync(s, at, srow.project_id, srow.id, srow.name,
                              [prices.snapshot_rate(svc.settings, srow.size_gib)])
    return out


_REPORTED = (select(InstanceRow.id, InstanceRow.generation, InstanceRow.state,
                    InstanceRow.state_reason, InstanceRow.desired_power,
                    InstanceRow.reboot_seq, InstanceRow.reboot_done_seq,
                    InstanceRow.project_id, InstanceRow.name, InstanceRow.type_name,
                    InstanceRow.vcpus, InstanceRow.ram_mib, InstanceRow.disk_gib)
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
    storage_wake: set[str] = set()  # hosts whose volumes a storage report changed
    at = metering.now(svc)
    with svc.db.session() as s:
        hosts.heartbeat(s, svc, reporter)
        if disk is not None:
            hosts.record_disk(s, reporter, disk)
        conn = s.connection()
        rows = {r[0]: r for r in conn.execute(
            _REPORTED, {"ids": [o.id for o in observations], "host": reporter})}
        writes: list[dict[str, object]] = []
        metered: set[str] = set()  # writes that start or stop an instance's billing
        happened: list[events.Event] = []  # written with the changes: one statement
        for obs in observations:
            row = rows.get(obs.id)
            if row is None or obs.generation < row.generation:
                continue
            (iid, generation, old_state, old_reason, desired, reboot_seq, done_seq,
             project_id, vm_name) = row[:9]
            if obs.state == DELETED:
                if desired == DesiredPower.DELETED.value:
                    gone += forget_instance(s, at, iid)
                    changed.add(iid)
                    refresh = True
                    happened.append(events.Event(project_id, "instance", iid, vm_name,
                                                 "deleted", "agent"))
                continue
            out = apply_report(
                Recorded(old_state, old_reason, desired, reboot_seq, done_seq),
                Seen(InstanceState(obs.state), one_line(obs.reason, MAX_REASON),
                     obs.guest_initiated, obs.reboot_done_seq))
            refresh |= out.agent_must_know
            if out.changed:
                changed.add(iid)
            new_state, reason, desired, done_seq = out.state, out.reason, out.desired, out.done_seq
            if out.observed_change:
                what = events.instance_transition(old_state, new_state, reason,
                                                  obs.guest_initiated)
                if what is not None:
                    happened.append(events.Event(project_id, "instance", iid, vm_name, *what))
            if iid in changed:
                writes.append({"iid": iid, "gen": generation, "new_state": new_state,
                               "reason": reason, "desired": desired, "done_seq": done_seq})
                if (old_state in metering.BILLED_STATES) != (new_state in metering.BILLED_STATES):
                    metered.add(iid)
        _apply(s, svc, at, writes, metered, rows)
        if volumes or snapshots:
            happened += _report_storage(s, svc, at, reporter, volumes, snapshots, storage_wake)
        events.add(s, happened)
        wake, moved = (migration_agents.apply(s, svc, reporter, migrations) if migrations
                       else (set(), set()))
    migration_agents.after_commit(svc, wake, moved)  # the reporter too: its part changed
    for other in sorted(storage_wake - {reporter}):
        svc.notifier.notify(other)
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


def _apply(s: Session, svc: Services, at: datetime, writes: list[dict[str, object]],
           metered: set[str], rows: Mapping[str, Any]) -> None:
    """Write the instances' new states (`rows`: their _REPORTED rows). Those that start or
    stop billing one by one, so that an instance's metering changes only when its write did
    (the generation guard held)."""
    conn = s.connection()
    plain = [w for w in writes if w["iid"] not in metered]
    if plain:
        conn.execute(_APPLY, plain)
    changes = []
    for w in writes:
        if w["iid"] in metered and conn.execute(_APPLY, w).rowcount == 1:
            r = rows[str(w["iid"])]
            changes.append(metering.instance_change(
                svc.settings, r.project_id, r.id, r.name, str(w["new_state"]), r.type_name,
                r.vcpus, r.ram_mib, r.disk_gib))
    metering.sync_many(s, at, changes)


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

