"""Hypervisor hosts: registration by their agent, liveness, capacity."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import time
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import String, and_, bindparam, case, cast, false, func, select, update
from sqlalchemy.orm import Session

from cumulo.config import Settings
from cumulo.db.tables import DedicatedHostRow, HostRow, InstanceRow, MigrationRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, InvalidInput
from cumulo.domain.ids import new_id
from cumulo.domain.instance import InstanceState
from cumulo.domain.validation import MAX_INTEGER, dns_label, positive
from cumulo.protocol import HostDisk
from cumulo.scheduler.placement import HostCapacity
from cumulo.services import events, segments, storage_down
from cumulo.services.auth import require_agent
from cumulo.services.context import Principal, Services

# What a registration may say besides its numbers, as the columns hold it: shown to users
# (`cumulo zone list`) and, for agent_url, where the API fetches consoles from.
_DRIVER = re.compile(r"^[a-z0-9_-]{1,16}\Z")
_ACCEL = re.compile(r"^[a-z0-9_-]{0,8}\Z")
_AGENT_URL = re.compile(r"^(unix:/[^\x00-\x1f\x7f]{1,290}|https?://[\x21-\x7e]{1,290})\Z")

log = structlog.get_logger("cumulo.api")

# An agent's long-poll is answered after LONG_POLL_MAX at most (the API caps the wait it
# asks for), and each answer is a heartbeat: an idle agent heartbeats every 4 s. Silence this
# long (three heartbeats missed) marks its host down: within 15 s of the agent's last word, as
# promised, with room for a busy API.
LONG_POLL_MAX = timedelta(seconds=4)
HOST_DOWN_AFTER = timedelta(seconds=12)
_AGENT_VERSION = re.compile(r"^[0-9A-Za-z.+_-]{0,32}\Z")


def register(
    svc: Services,
    who: Principal,
    *,
    name: str,
    zone: str,
    architectures: list[str],
    vcpus: int,
    ram_mib: int,
    driver: str,
    accel: str,
    agent_url: str,
    agent_version: str = "",
    underlay_ip: str | None = None,
    disk: HostDisk | None = None,
    cpus: list[int] | None = None,
    storage: bool = False,
) -> str:
    """Create or update the host record; returns its id. Called by the agent at start-up.
    A host whose underlay address changed has its instances' records sent again to every
    host serving their networks (their VXLAN entries point at the old address)."""
    require_agent(who, name)
    dns_label(name, "host name")
    if zone not in svc.settings.zone_names():
        raise InvalidInput(f"unknown zone {zone!r}", code="unknown_zone")
    positive(vcpus, "vcpus")
    positive(ram_mib, "ram_mib")
    arches = sorted({Arch.parse(a).value for a in architectures})
    if not arches:
        raise InvalidInput("a host runs at least one architecture", code="invalid_input")
    for what, value, pattern in (("driver", driver, _DRIVER), ("accel", accel, _ACCEL),
                                 ("agent_version", agent_version, _AGENT_VERSION)):
        if not pattern.match(value):
            raise InvalidInput(f"invalid {what} {value!r}", code="invalid_input")
    if disk is not None:
        check_disk(disk)
    if agent_url and not _AGENT_URL.match(agent_url):
        raise InvalidInput(f"invalid agent_url {agent_url!r}: unix:/PATH or http(s)://...",
                           code="invalid_input")
    if underlay_ip is not None:
        underlay_ip = _underlay(underlay_ip)
    if cpus is not None:
        cpus = _cpus(cpus)
    with svc.db.session() as s:
        if underlay_ip is not None and s.scalar(select(HostRow.name).where(
                HostRow.underlay_ip == underlay_ip, HostRow.name != name,
                HostRow.state == "up", HostRow.last_seen > datetime.now(UTC) - HOST_DOWN_AFTER)):
            raise Conflict(f"underlay address {underlay_ip} is used by another host that is up",
                           code="underlay_ip_taken")
        row = s.scalar(select(HostRow).where(HostRow.name == name))
        moved = row is not None and row.underlay_ip != underlay_ip
        if row is None:
            row = HostRow(id=new_id("h"), name=name)
            s.add(row)
        elif row.state == "down":
            _came_back(s, row.id, row.name)
        row.zone, row.architectures = zone, arches
        row.vcpus, row.ram_mib, row.driver, row.accel = vcpus, ram_mib, driver, accel
        row.agent_url, row.state, row.last_seen = agent_url, "up", datetime.now(UTC)
        row.agent_version, row.underlay_ip, row.cpus = agent_version, underlay_ip, cpus
        row.storage = storage
        row.disk_total_mib = None if disk is None else disk.total_mib
        row.disk_free_mib = None if disk is None else disk.free_mib
        s.flush()
        host_id: str = row.id
    svc.notifier.host_ids[name] = host_id  # a fresh database gives a known name a new id
    if moved:
        segments.announce_host(svc, host_id)
    return host_id


def _underlay(value: str) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidInput(f"invalid underlay address {value!r}", code="invalid_input") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local:
        raise InvalidInput(f"invalid underlay address {value!r}: a unicast host address",
                           code="invalid_input")
    return str(ip)


MAX_CPUS = 8192  # Linux's largest NR_CPUS


def _cpus(cpus: list[int]) -> list[int]:
    if not cpus or len(cpus) > MAX_CPUS or not all(0 <= c < MAX_CPUS for c in cpus):
        raise InvalidInput(f"invalid cpus: 1 to {MAX_CPUS} CPU ids from 0 to {MAX_CPUS - 1}",
                           code="invalid_input")
    return sorted(set(cpus))


def check_disk(disk: HostDisk) -> None:
    """A host's disk report holds together (else it is refused: placement relies on it)."""
    if not 0 <= disk.free_mib <= disk.total_mib <= MAX_INTEGER:
        raise InvalidInput(f"invalid disk space: {disk.free_mib} MiB free of {disk.total_mib}",
                           code="invalid_input")


def record_disk(s: Session, host_id: str, disk: HostDisk) -> None:
    """What the host's agent reports of its state dir's filesystem now (one that does not
    hold together is logged and left out, like any observation the API cannot use)."""
    try:
        check_disk(disk)
    except InvalidInput as e:
        log.warning("disk_report_ignored", host_id=host_id, error=e.message)
        return
    s.execute(update(HostRow).where(HostRow.id == host_id)
              .values(disk_total_mib=disk.total_mib, disk_free_mib=disk.free_mib))


# A heartbeat younger than this is not written again: every poll of every agent would
# otherwise be a write transaction (on SQLite, one more turn of the single write lock).
HEARTBEAT_WRITE_EVERY = timedelta(seconds=3)


def heartbeat(s: Session, svc: Services, host_id: str) -> None:
    """The host is alive. Written at most every HEARTBEAT_WRITE_EVERY, without loading the
    host: this process remembers when it last wrote one (only `register` and heartbeats
    write a host's state, and both write "up")."""
    now = time.monotonic()
    last = svc.notifier.heartbeats.get(host_id)
    if last is not None and now - last < HEARTBEAT_WRITE_EVERY.total_seconds():
        return
    if not beat_heard(svc, host_id):
        _write_beats(s, [host_id])
        svc.notifier.heartbeats[host_id] = now


def beat_heard(svc: Services, host_id: str) -> bool:
    """A beat of the host (a long-poll's, or a verified UDP one: cumulo.beats), noted for the
    flusher (services.pending_beats) when this process has written the host up already.
    False: not noted; the caller writes it, or (a UDP beat) its next long-poll answer does,
    with its coming back when it was down (and its events)."""
    if host_id not in svc.notifier.heartbeats or not svc.notifier.pending_beats.note(host_id):
        return False
    svc.notifier.heartbeats[host_id] = time.monotonic()
    return True


def write_heartbeats(svc: Services, host_ids: list[str]) -> None:
    """The beats the API's flusher took (services.pending_beats), in one statement."""
    try:
        with svc.db.session() as s:
            _write_beats(s, host_ids)
    except Exception:
        for host_id in host_ids:  # not written: their next beats are, at once
            svc.notifier.heartbeats.pop(host_id, None)
        raise


def _write_beats(s: Session, host_ids: list[str]) -> None:
    """The hosts are alive. Hosts that are up stay up: one statement for all of them; one it
    matched no row of was marked down (by a sweep, of this or another API process): up
    again, and said so."""
    now = datetime.now(UTC)
    if s.connection().execute(_BEATS, {"hosts": host_ids, "now": now}).rowcount == len(host_ids):
        return
    for host_id, name in s.execute(_NOT_UP, {"hosts": host_ids}):
        s.execute(update(HostRow).where(HostRow.id == host_id).values(last_seen=now, state="up"))
        _came_back(s, host_id, name)


_BEATS = (update(HostRow)
          .where(HostRow.id.in_(bindparam("hosts", expanding=True)), HostRow.state == "up")
          .values(last_seen=bindparam("now")))
_NOT_UP = select(HostRow.id, HostRow.name).where(
    HostRow.id.in_(bindparam("hosts", expanding=True)), HostRow.state != "up")


def _came_back(s: Session, host_id: str, name: str) -> None:
    said = f"host {name}'s agent is heard from again"
    events.add(s, [events.Event(None, "host", host_id, name, "up", "system", said),
                   *_on_instances(s, host_id, "host_up", said),
                   *storage_down.volume_events(s, host_id, "storage_host_up",
                                               f"its storage host {name} is back")])


def _on_instances(s: Session, host_id: str, kind: str, said: str) -> list[events.Event]:
    """An event for each instance of the host, in its project's log."""
    return [events.Event(project_id, "instance", iid, vm, kind, "system", said)
            for iid, vm, project_id in s.execute(
                select(InstanceRow.id, InstanceRow.name, InstanceRow.project_id)
                .where(InstanceRow.host_id == host_id))]


def sweep_down(svc: Services) -> list[str]:
    """Mark down the hosts whose agent was silent for HOST_DOWN_AFTER; each such host, and
    each instance and volume on it (in its project's log), gets an event. The names marked
    down.

    Run every few seconds by each API process: the conditional update lets one of them only
    mark (and tell of) a host."""
    cutoff = datetime.now(UTC) - HOST_DOWN_AFTER
    marked: list[str] = []
    with svc.db.session() as s:
        silent = list(s.execute(select(HostRow.id, HostRow.name).where(
            HostRow.state == "up", HostRow.last_seen < cutoff)))
        for host_id, name in silent:
            mark = (update(HostRow).values(state="down")
                    .where(HostRow.id == host_id, HostRow.state == "up",
                           HostRow.last_seen < cutoff))
            if s.connection().execute(mark).rowcount == 0:
                continue  # it beat meanwhile, or another process marked it
            svc.notifier.heartbeats.pop(host_id, None)  # its next beat is written
            said = f"no word from host {name}'s agent for {HOST_DOWN_AFTER.total_seconds():g} s"
            events.add(s, [events.Event(None, "host", host_id, name, "down", "system", said),
                           *_on_instances(s, host_id, "host_down", said),
                           *storage_down.volume_events(s, host_id, "storage_host_down",
                                                       storage_down.reason(name))])
            marked.append(name)
    return marked


# The first key of cumulo's PostgreSQL advisory locks on zones (the second is the zone's hash):
# other users of advisory locks in the same database pick other first keys.
ZONE_LOCK_CLASS = 0x63756D  # "cum"


_SQLITE_WRITE_LOCK = update(HostRow).where(false()).values(zone=HostRow.zone)  # see lock_zone


def lock_zone(s: Session, zone: str) -> None:
    """Serialize placements in `zone` until the transaction ends (two concurrent creates must
    not both take the last slot, nor the same address).

    PostgreSQL takes a transaction-scoped advisory lock on the zone. Locking the zone's host
    rows (SELECT ... FOR UPDATE) did the same, but wrote every one of those rows on every
    create, and made every heartbeat to those hosts wait for the create to commit. Two zones
    whose hashes collide merely share a lock.

    SQLite has no row locks and starts a write transaction lazily at the first write, so
    concurrent creates would read the same free address or capacity and collide at commit:
    an UPDATE takes SQLite's (single, whole database) write lock now, waiting for other
    writers, and every read after it is current. It matches no row on purpose: the lock is
    taken all the same, and rewriting the zone's host rows on every create cost more than
    the rest of the lock.
    """
    if s.get_bind().dialect.name == "sqlite":
        s.execute(_SQLITE_WRITE_LOCK)
    else:
        s.execute(select(func.pg_advisory_xact_lock(ZONE_LOCK_CLASS, func.hashtext(zone))))


# The statements of `capacities`, built once (every create runs them). A host is up when its
# agent registered or heartbeat (state "up") less than HOST_DOWN_AFTER ago (`seen_after`).
IS_UP = and_(HostRow.state == "up", HostRow.last_seen > bindparam("seen_after"))
_HOSTS = select(HostRow.id, HostRow.name, HostRow.zone, cast(HostRow.architectures, String),
                IS_UP, HostRow.disabled, HostRow.vcpus, HostRow.ram_mib, HostRow.disk_total_mib,
                HostRow.disk_free_mib, cast(HostRow.cpus, String))
_ZONE_HOSTS = _HOSTS.where(HostRow.zone == bindparam("zone"))
_USED = (select(InstanceRow.host_id, func.sum(InstanceRow.vcpus), func.sum(InstanceRow.ram_mib),
                func.count(), func.sum(InstanceRow.disk_mib),
                func.sum(case((InstanceRow.state == InstanceState.PENDING.value,
                               InstanceRow.disk_mib), else_=0)))
         .where(InstanceRow.host_id.is_not(None))
         .group_by(InstanceRow.host_id))
# An instance is in its host's zone: a zone's hosts need only the zone's instances summed.
_ZONE_USED = _USED.where(InstanceRow.zone == bindparam("zone"))
# What live migrations under way hold on their destinations (the source holds the instance
# itself): capacity is held on both hosts until the migration ends.
_CLAIMED = (select(MigrationRow.destination_host_id, func.sum(InstanceRow.vcpus),
                   func.sum(InstanceRow.ram_mib), func.count(), func.sum(InstanceRow.disk_mib))
            .join(InstanceRow, InstanceRow.id == MigrationRow.instance_id)
            .where(MigrationRow.active)
            .group_by(MigrationRow.destination_host_id))
_DEDICATED = select(DedicatedHostRow.allocated_host_id, DedicatedHostRow.project_id,
                    DedicatedHostRow.id).where(DedicatedHostRow.allocated_host_id.is_not(None))
_ZONE_DEDICATED = _DEDICATED.where(DedicatedHostRow.zone == bindparam("zone"))


def seen_after() -> datetime:
    """A host whose agent was last heard of before this is down."""
    return datetime.now(UTC) - HOST_DOWN_AFTER


def capacities(s: Session, settings: Settings, zone: str | None = None) -> list[HostCapacity]:
    """Every host's capacity (under the settings' allocation ratios) and what its instances
    (any state but deleted) hold.

    Every create reads every host of its zone: columns rather than ORM objects, liveness
    decided by the database, and each distinct architecture list parsed once per process.
    That cut this function's CPU from 1.6 to 0.6 ms with 100 hosts."""
    s.flush()  # instances this session added count too: the connection does not autoflush
    conn = s.connection()
    used = {hid: (int(c or 0), int(r or 0), int(n), int(d or 0), int(p or 0))
            for hid, c, r, n, d, p in (conn.execute(_USED) if zone is None
                                       else conn.execute(_ZONE_USED, {"zone": zone}))}
    for hid, c, r, n, d in conn.execute(_CLAIMED):
        uc, ur, un, ud, up = used.get(hid, (0, 0, 0, 0, 0))
        # Its disk is written as it arrives: pending, like a new instance's.
        used[hid] = (uc + int(c or 0), ur + int(r or 0), un + int(n), ud + int(d or 0),
                     up + int(d or 0))
    dedicated = {hid: (pid, did) for hid, pid, did in (
        conn.execute(_DEDICATED) if zone is None
        else conn.execute(_ZONE_DEDICATED, {"zone": zone}))}
    after = seen_after()
    rows = (conn.execute(_HOSTS, {"seen_after": after}) if zone is None
            else conn.execute(_ZONE_HOSTS, {"seen_after": after, "zone": zone}))
    cpu_ratio, ram_ratio = settings.cpu_allocation_ratio, settings.ram_allocation_ratio
    out = []
    for (hid, name, host_zone, archs, host_up, disabled, vcpus, ram, disk_total, disk_free,
         cpus) in rows:
        vcpus_used, ram_used, count, disk_claimed, disk_pending = used.get(hid, (0, 0, 0, 0, 0))
        # A dedicated host pins each vCPU to a CPU of its own and does not overcommit RAM.
        # Its vCPUs are the machine's CPUs its agent may pin to, when it said which.
        to, did = dedicated.get(hid, (None, None))
        if to is not None:
            vcpus = len(pinnable(cpus, vcpus))
        out.append(HostCapacity(
            host_id=hid, name=name, zone=host_zone, architectures=_architectures(archs),
            up=bool(host_up), enabled=not disabled, vcpus_total=vcpus, ram_mib_total=ram,
            vcpus_used=vcpus_used, ram_mib_used=ram_used,
            cpu_ratio=cpu_ratio if to is None else 1.0,
            ram_ratio=ram_ratio if to is None else 1.0, instances=count,
            disk_total_mib=disk_total, disk_free_mib=disk_free, disk_claimed_mib=disk_claimed,
            disk_pending_mib=disk_pending, dedicated_to=to, dedicated_id=did))
    return out


def pinnable(cpus_json: str | None, vcpus: int) -> list[int]:
    """The CPU ids a dedicated host pins vCPUs to: those its agent registered (the hosts
    column's JSON text), else 0..vcpus-1."""
    listed = json.loads(cpus_json) if cpus_json else None
    return list(listed) if listed else list(range(vcpus))


@functools.lru_cache(maxsize=256)
def _architectures(json_text: str) -> frozenset[str]:
    """A host's architectures column, read as its JSON text (a list of names)."""
    return frozenset(json.loads(json_text))
