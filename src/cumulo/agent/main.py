"""The host agent process: register, then watch assignments and reconcile until told to stop.

Stopping the agent never stops a VM: QEMU processes run in sessions of their own and are
re-adopted by the next agent through their pidfiles and QMP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog
import uvicorn

import cumulo
from cumulo.agent.api_client import ApiClient
from cumulo.agent.beat_sender import send_beats
from cumulo.agent.console_server import make_app
from cumulo.agent.counters import RECONCILE_SECONDS
from cumulo.agent.disk_space import DiskGauge
from cumulo.agent.dns_book import DnsBook
from cumulo.agent.drivers.base import Driver, MigratingDriver, PowerState
from cumulo.agent.host_lock import LOCK_WAIT_S, HostBusy, HostLock, run_supervised
from cumulo.agent.image_cache import ImageCache
from cumulo.agent.image_export import ExportApi, Exporter
from cumulo.agent.instance_book import InstanceBook
from cumulo.agent.migration_reconciler import MigrationReconciler
from cumulo.agent.reconciler import Reconciler
from cumulo.agent.storage.nbd_exports import (
    DaemonExporter,
    RecordingExporter,
    VolumeExporter,
)
from cumulo.agent.storage.volumes import VolumeStore
from cumulo.agent.volume_reconciler import VolumeReconciler
from cumulo.agent.watchdog import watched
from cumulo.domain.arch import Arch
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB
from cumulo.protocol import (
    Assignment,
    Assignments,
    HostRegistration,
    MigrationObservation,
    Report,
    SnapshotObservation,
    VolumeObservation,
)

log = structlog.get_logger("cumulo.agent")

# How long the API may hold an unchanged long-poll. Each answer is the host's heartbeat: the
# API marks a host down after 12 s of silence (and answers after 4 s at most anyway).
LONG_POLL_S = 4.0
OBSERVE_S = 2.0  # how often the host's VMs are observed (crashes seen within ~2 s). Each pass
# checks every VM's pid, converges the network and asks QMP about VMs not asked for 5 s: at
# 1 s, 50 idle VMs cost the agent 1.8 % of a core (bench idle), over the 2 % promise.
RESYNC_S = 30.0  # re-send every observation this often, in case the API lost one
# A pass longer than this is logged with where it waits (a boot under TCG takes ~10 s; a
# cold copy's or an image fetch's waits are in the pass too, but each step returns).
SLOW_PASS_S = 60.0
_LIVE = (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN)  # processes holding disks


@dataclass
class AgentConfig:
    api_url: str
    token: str
    host_dir: Path
    name: str
    zone: str
    vcpus: int
    ram_mib: int
    driver: str = "qemu"
    accel: str = "auto"
    tcg_tb_size_mib: int = DEFAULT_TB_SIZE_MIB  # TCG's translation cache per VM (0: QEMU's)
    architectures: list[Arch] = field(default_factory=lambda: [Arch.X86_64, Arch.ARM64])
    stop_timeout_s: float = 30.0
    metrics_listen: str = ""  # HOST:PORT of the /metrics endpoint ("": none)
    metrics_token: str = ""  # a scrape must carry it ("": any local scrape)
    resume_free_mib: int = 64
    qemu_uid_base: int = 1_900_000_000  # the range of the VMs' uids (see qemu_confine)
    qemu_uid_count: int = 65536
    underlay_ip: str | None = None  # this host's address on the underlay (VXLAN, NBD, ...)
    storage: bool = False  # a storage host: the zone's new volumes go to such hosts
    edge_ip: str | None = None  # the edge's address on the underlay (cumulo.edge)
    # The fake driver's stand-in for the underlay between fake hosts in separate processes
    # (migrations): a directory they share (see FakeFabric). None: this host's alone.
    fake_fabric_dir: Path | None = None


def make_driver(cfg: AgentConfig) -> tuple[Driver, str]:
    """The driver and the accelerator it will use (shown in `zone list`)."""
    if cfg.driver == "fake":
        from cumulo.agent.drivers.fake import FakeDriver, FakeHost
        from cumulo.agent.drivers.fake_migration import FakeFabric

        return FakeDriver(FakeHost(fabric=FakeFabric(shared=cfg.fake_fabric_dir))), "fake"
    from cumulo.agent.drivers.accel import resolve_accel
    from cumulo.agent.drivers.qemu import QemuDriver

    native = Arch.X86_64 if platform.machine() == "x86_64" else Arch.ARM64
    accel = resolve_accel(cfg.accel, native, cfg.host_dir)
    from cumulo.agent.drivers.qemu_confine import UidPool

    uids = UidPool(base=cfg.qemu_uid_base, count=cfg.qemu_uid_count)
    driver = QemuDriver(cfg.host_dir / "run", accel=accel, uids=uids,
                        tb_size_mib=cfg.tcg_tb_size_mib)
    return driver, accel


async def run_agent(cfg: AgentConfig, stop: asyncio.Event) -> None:
    cfg.host_dir.mkdir(parents=True, exist_ok=True)
    lock = HostLock(cfg.host_dir)
    await lock.acquire(LOCK_WAIT_S, stop)
    if not lock.held:
        return  # told to stop while waiting
    try:
        await _run_locked(cfg, stop)
    finally:
        lock.release()


async def _run_locked(cfg: AgentConfig, stop: asyncio.Event) -> None:
    driver, accel = make_driver(cfg)
    sock = cfg.host_dir / "agent.sock"
    sock.unlink(missing_ok=True)
    server = uvicorn.Server(
        uvicorn.Config(make_app(driver), uds=str(sock), log_level="warning", lifespan="off")
    )
    server_task = asyncio.create_task(server.serve())
    metrics_server = _metrics_server(cfg, driver)
    metrics_task = asyncio.create_task(metrics_server.serve()) if metrics_server else None
    client = ApiClient(cfg.api_url, cfg.token)
    network = None
    if cfg.driver == "qemu":
        from cumulo.agent.net.host_network import HostNetwork

        network = HostNetwork(cfg.host_dir, cfg.underlay_ip, cfg.edge_ip)
    vrec = VolumeReconciler(driver, VolumeStore(cfg.host_dir), exporter=volume_exporter(cfg))
    rec = Reconciler(
        driver,
        cfg.host_dir / "instances",
        stop_timeout_s=cfg.stop_timeout_s,
        resume_free_bytes=cfg.resume_free_mib * 1024 * 1024,
        network=network,
        volumes=vrec.attachments_for,
        images=image_cache(client, cfg.name, cfg.host_dir),
        exporter=exporter(client, cfg.name, cfg.host_dir),
    )
    reg = HostRegistration(
        name=cfg.name,
        zone=cfg.zone,
        architectures=[a.value for a in cfg.architectures],
        vcpus=cfg.vcpus,
        ram_mib=cfg.ram_mib,
        driver=cfg.driver,
        accel=accel,
        agent_url=f"unix:{sock}",
        agent_version=cumulo.__version__,
        underlay_ip=cfg.underlay_ip,
        cpus=sorted(os.sched_getaffinity(0)),
        storage=cfg.storage,
    )
    mrec = None
    if isinstance(driver, MigratingDriver):
        mrec = MigrationReconciler(driver, cfg.host_dir / "migrations", rec.incoming_spec,
                                   rec.remove_storage, cfg.underlay_ip)
    try:
        await agent_loop(client, rec, reg, stop, vrec, DiskGauge(cfg.host_dir), mrec)
    finally:
        for job in (rec.images, rec.exporter):
            if job is not None:
                await job.close()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 5)
        if metrics_server is not None and metrics_task is not None:
            metrics_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(metrics_task, 5)
        await client.close()
        sock.unlink(missing_ok=True)


def volume_exporter(cfg: AgentConfig) -> VolumeExporter | None:
    """How this host exports its volumes to instances of other hosts: qemu-storage-daemon in
    the host's namespace on its underlay address; recorded only by fake hosts; none without
    an underlay."""
    if cfg.driver == "fake":
        return RecordingExporter()
    if not cfg.underlay_ip:
        return None
    from cumulo.agent.drivers.qemu_confine import UidPool
    from cumulo.agent.net.names import netns_name

    return DaemonExporter(cfg.host_dir / "nbd", cfg.underlay_ip, netns_name(cfg.host_dir),
                          UidPool(base=cfg.qemu_uid_base, count=cfg.qemu_uid_count))


def _metrics_server(cfg: AgentConfig, driver: Driver) -> uvicorn.Server | None:
    if not cfg.metrics_listen:
        return None
    from cumulo.agent import metrics

    host, _, port = cfg.metrics_listen.rpartition(":")
    app = metrics.make_app(driver, cfg.name, cfg.metrics_token)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="warning",
                                         lifespan="off"))


def image_cache(client: ApiClient, host: str, host_dir: Path) -> ImageCache:
    """The host's image cache (`<host dir>/images`), filled from the API over HTTP."""
    return ImageCache(host_dir / "images", functools.partial(client.image_file, host),
                      functools.partial(client.images_gone, host), host_dir / "instances")


def exporter(client: ApiClient, host: str, host_dir: Path) -> Exporter:
    api = ExportApi(functools.partial(client.export_status, host),
                    functools.partial(client.export_upload, host))
    return Exporter(api, host_dir / "instances", host_dir / "exports")


async def agent_loop(
    client: ApiClient,
    rec: Reconciler,
    reg: HostRegistration,
    stop: asyncio.Event,
    vrec: VolumeReconciler | None = None,
    disk: DiskGauge | None = None,
    mrec: MigrationReconciler | None = None,
) -> None:
    """Register, then long-poll assignments, reconcile and report until `stop` is set.

    The whole protocol of an agent with the API; `run_agent` wraps it with a driver and the
    console server, and the control-plane benchmark runs 100 of these in one process.
    Volumes are reconciled first, so a VM started in the same pass boots with its volumes.
    `disk` measures the host's disk space, for placement (registration and reports).
    """
    registered = False
    version = -1
    dns = DnsBook()
    held = InstanceBook()
    batch: Assignments | None = None
    poll: asyncio.Task[Assignments] | None = None
    riding: Report | None = None  # the report of the pass an answer caused: on the next poll
    last_resync = time.monotonic()
    beating = asyncio.create_task(send_beats(client, reg.name, stop))
    try:
        while not stop.is_set():
            try:
                if not registered:
                    if disk is not None:
                        reg.disk = disk.measure()
                    await client.register(reg)
                    registered = True
                    log.info("agent_registered", host=reg.name, zone=reg.zone, accel=reg.accel)
                # One long-poll stays open (the API answers at once when anything changes);
                # meanwhile the host is observed every OBSERVE_S from the last answer, so an
                # idle host costs the API one request per LONG_POLL_S, not one per second.
                if poll is None:
                    poll = asyncio.create_task(
                        client.assignments(reg.name, since=version, wait=LONG_POLL_S,
                                           dns=dns.claims(), have=held.claim(),
                                           report=riding))
                    riding = None
                done, _ = await asyncio.wait(
                    {poll}, timeout=OBSERVE_S if batch is not None else None)
                if poll in done:
                    answered, poll = poll, None
                    whole = held.apply(answered.result())
                    if whole is None:
                        version = -1  # ask again at once, for the whole list
                        continue
                    batch = dns.apply(whole)
                    version = batch.version
                if batch is None:
                    continue
                if time.monotonic() - last_resync > RESYNC_S:
                    _forget_reports(rec, vrec, disk, mrec)
                    last_resync = time.monotonic()
                started = time.perf_counter()
                report = await watched(_pass(rec, batch, vrec, mrec), "reconcile_pass", SLOW_PASS_S)
                RECONCILE_SECONDS.observe(time.perf_counter() - started)
                space = disk.to_report() if disk is not None else None
                if space is not None:
                    report = report or Report(observations=[])
                    report.disk = space
                if report is None:
                    continue
                if poll is None:
                    riding = report  # an answer caused this pass: no poll is open
                else:
                    await client.report(reg.name, report)
                # Acknowledged now even when it rides: a failed poll forgets every report
                # (below), so that the next pass reports everything again.
                rec.acknowledge(report.observations)
                if vrec is not None:
                    vrec.acknowledge(report.volumes, report.snapshots)
                if mrec is not None:
                    mrec.acknowledge(report.migrations)
                if disk is not None:
                    disk.acknowledge(report.disk)
            except httpx.HTTPStatusError as e:
                if e.response.status_code == 404:
                    registered = False  # the API forgot us (fresh DB): register again
                    dns.forget()
                    held.forget()
                log.warning("api_error", status=e.response.status_code,
                            body=e.response.text[:200])
                _forget_reports(rec, vrec, disk, mrec)
                await _sleep_or_stop(stop, 1.0)
            except httpx.TransportError as e:
                log.warning("api_unreachable", error=str(e))  # VMs keep running meanwhile
                _forget_reports(rec, vrec, disk, mrec)
                await _sleep_or_stop(stop, 1.0)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        if poll is not None:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await poll


async def _pass(rec: Reconciler, batch: Assignments, vrec: VolumeReconciler | None,
                mrec: MigrationReconciler | None = None) -> Report | None:
    """Reconcile migrations, volumes, then instances; what changed, to report (None:
    nothing)."""
    migs: list[MigrationObservation] = []
    moving: set[str] = set()
    arriving: list[Assignment] = []
    if mrec is not None and (batch.migrations or mrec.to_announce):
        if vrec is not None:
            vrec.expect(batch.volumes)
        migs = await mrec.run_pass(batch.migrations)
        moving = mrec.moving(batch.migrations)
        # Not its public address: that stays with the host the instance is assigned to.
        arriving = [m.instance.model_copy(update={"public_ip": None})
                    for m in batch.migrations
                    if m.role == "destination" and m.instance is not None and not m.cold]
    vols: list[VolumeObservation] = []
    snaps: list[SnapshotObservation] = []
    if vrec is not None and (batch.volumes or batch.snapshots or vrec.busy):
        # An arriving VM's volumes are on its command line: none is hot-plugged into (or
        # unplugged from) it while it arrives.
        running = {
            vm_id for vm_id, o in (await rec.driver.observe()).items() if o.power in _LIVE
        } - {m.instance_id for m in batch.migrations if m.role == "destination" and not m.cold}
        vols, snaps = await vrec.run_pass(batch.volumes, batch.snapshots, running)
    changed = await rec.run_pass(batch.instances, batch.networks, moving, arriving,
                                 batch.ports)
    if mrec is not None and mrec.to_announce:
        await mrec.announce({o.id for o in changed if o.state == "running"}
                            | {a.id for a in batch.instances if a.state == "running"})
    if changed or vols or snaps or migs:
        return Report(observations=changed, volumes=vols, snapshots=snaps, migrations=migs)
    return None


def _forget_reports(rec: Reconciler, vrec: VolumeReconciler | None,
                    disk: DiskGauge | None, mrec: MigrationReconciler | None = None) -> None:
    """The next pass reports everything again: a periodic resync, or after a request failed
    (a report may have been lost with it)."""
    rec.forget_reports()
    if mrec is not None:
        mrec.forget_reports()
    if vrec is not None:
        vrec.forget_reports()
    if disk is not None:
        disk.forget()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def main(cfg: AgentConfig, parent_pid: int | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; the process's exit status.

    `parent_pid`: the supervising process (`cumulo up`); the agent stops when it dies."""
    try:
        run_supervised(lambda stop: run_agent(cfg, stop), parent_pid)
    except HostBusy as e:
        print(f"cumulo agent: {cfg.name}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
