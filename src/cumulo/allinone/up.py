"""`cumulo up`: API + scheduler + one local agent in the foreground.

The agent runs as a child process and talks to the API over HTTP exactly as a remote host
would. SIGTERM/SIGINT stop the API and the agent, never the VMs: those are re-adopted next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
import tomli_w
from fastapi import FastAPI
from sqlalchemy import select

from cumulo.agent.net.names import netns_name
from cumulo.allinone import edge_process, fabric
from cumulo.allinone.baremetal_lab import Lab, deploy_settings
from cumulo.allinone.paths import StatePaths, write_private
from cumulo.api import app as app_mod
from cumulo.api import server, threads
from cumulo.api.app import create_app
from cumulo.config import Settings, load_settings
from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.db.tables import HostRow, TokenRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, InvalidInput
from cumulo.pidlock import PidLock
from cumulo.services import images
from cumulo.services.access_keys import load_server_key
from cumulo.services.auth import ensure_default_project, issue_token, token_digest
from cumulo.services.context import Role, Services
from cumulo.services.notifier import Notifier

log = structlog.get_logger("cumulo.up")


def _say(msg: str) -> None:
    print(f"cumulo: {msg}", file=sys.stderr, flush=True)


def _hold_state_dir(paths: StatePaths) -> PidLock:
    """`up.pid`, locked for as long as this `cumulo up` runs: one cloud per state dir, even
    for two started at the same instant (`cumulo down` reads the lock too)."""
    lock = PidLock(paths.pidfile)
    if not lock.try_acquire():
        raise Conflict(
            f"a cloud already runs from {paths.root} (pid {lock.holder() or '?'}); "
            "stop it first or use another --state-dir",
            code="already_running",
        )
    return lock


def _token_valid(db: Database, token: str) -> bool:
    with db.session() as s:
        return (
            s.scalar(select(TokenRow.id).where(TokenRow.sha256 == token_digest(token))) is not None
        )


def _read_token(path: Path, key: str = "token") -> str | None:
    import tomllib

    try:
        value = tomllib.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class LocalHostPlan:
    """One host `cumulo up` runs: its name, zone and share of the machine."""

    name: str
    zone: str
    vcpus: int
    ram_mib: int
    underlay: ipaddress.IPv4Interface | None  # None: not on the underlay
    metrics_port: int = 0  # its agent's /metrics ([host] metrics_port, the next ones after it)


def plan_hosts(settings: Settings, count: int) -> list[LocalHostPlan]:
    """`count` hosts of this machine: the first is [host] as configured, the others are named
    after it (`NAME-2`, ...) and spread over the zones in turn from [host]'s zone on, so two
    hosts and two zones put one in each. Each simulated machine gets an equal share of the
    configured vCPUs and RAM, and its own underlay address (a single host too: the edge
    reaches its instances over the underlay)."""
    host = settings.host
    zones = settings.zone_names()
    first = zones.index(host.zone)
    underlay = fabric.addresses(settings.network.underlay_cidr, count)
    return [
        LocalHostPlan(
            name=host.name if i == 0 else f"{host.name[:60]}-{i + 1}",
            zone=zones[(first + i) % len(zones)],
            vcpus=max(1, host.vcpus // count),
            ram_mib=max(256, host.ram_mib // count),
            underlay=underlay[i] if underlay else None,
            metrics_port=host.metrics_port + i if host.metrics_port else 0,
        )
        for i in range(count)
    ]


def hosts_to_run(paths: StatePaths, asked: int | None) -> int:
    """How many hosts: as asked, else as many as this state dir has. Fewer than it has would
    abandon instances on the hosts left out, so it is refused."""
    have = len(paths.hosts())
    if asked is None:
        return max(1, have)
    if not 1 <= asked <= MAX_LOCAL_HOSTS:
        raise InvalidInput(f"--hosts must be 1 to {MAX_LOCAL_HOSTS}", code="invalid_input")
    if asked < have:
        raise InvalidInput(f"this cloud has {have} hosts in {paths.root / 'hosts'}; "
                           f"--hosts {asked} would leave instances behind", code="invalid_input")
    return asked


MAX_LOCAL_HOSTS = 16


def prepare(paths: StatePaths, settings: Settings, db: Database, port: int,
            hosts: list[LocalHostPlan]) -> tuple[str, list[Path]]:
    """Schema, default project, tokens, client.toml, each agent's config and the edge's.
    Returns (url, the agents' configs)."""
    upgrade(db)
    url = f"http://127.0.0.1:{port}"
    write_client_config(paths, db, url)
    edge_token = _read_line(edge_process.edge_dir(paths) / "edge.token")
    edge_process.prepare(paths, db, url, edge_token is not None and _token_valid(db, edge_token),
                         settings.network.public_pool, settings.cloud_domain)
    return url, [_prepare_host(paths, settings, db, url, h) for h in hosts]


def _read_line(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def write_client_config(paths: StatePaths, db: Database, url: str) -> None:
    """The default project, and `client.toml` (URL + an admin token, 0600) for the CLI: the
    token it holds is kept while valid."""
    admin = _read_token(paths.client_config)
    with db.session() as s:
        ensure_default_project(s)
    if admin is None or not _token_valid(db, admin):
        with db.session() as s:
            admin = issue_token(s, Role.ADMIN, description="created by cumulo up")
    write_private(paths.client_config, tomli_w.dumps({"url": url, "token": admin}))


def _prepare_host(paths: StatePaths, settings: Settings, db: Database, url: str,
                  host: LocalHostPlan) -> Path:
    host_dir = paths.host_dir(host.name)
    token_file = host_dir / "agent.token"
    agent_token = token_file.read_text().strip() if token_file.exists() else None
    if agent_token is None or not _token_valid(db, agent_token):
        with db.session() as s:
            agent_token = issue_token(s, Role.AGENT, host_name=host.name,
                                      description="local agent")
        write_private(token_file, agent_token + "\n")
    agent_cfg = host_dir / "agent.json"
    write_private(  # it may hold the metrics token
        agent_cfg,
        json.dumps(
            {
                "api_url": url,
                "token_file": str(token_file),
                "host_dir": str(host_dir),
                "name": host.name,
                "zone": host.zone,
                "vcpus": host.vcpus,
                "ram_mib": host.ram_mib,
                "driver": settings.host.driver,
                "accel": settings.host.accel,
                "tcg_tb_size_mib": settings.host.tcg_tb_size_mib,
                "architectures": [a.value for a in settings.host.architectures],
                "stop_timeout_s": settings.host.stop_timeout_s,
                "underlay_ip": str(host.underlay.ip) if host.underlay else None,
                "edge_ip": str(edge_process.address(settings.network.underlay_cidr).ip)
                if host.underlay else None,
                "metrics_listen": f"127.0.0.1:{host.metrics_port}" if host.metrics_port else "",
                "metrics_token": settings.metrics_token,
                "resume_free_mib": settings.host.resume_free_mib,
                "qemu_uid_base": settings.host.qemu_uid_base,
                "qemu_uid_count": settings.host.qemu_uid_count,
                "storage": host.name in settings.host.storage_hosts,
                # One machine: its fake hosts migrate through a directory of the cloud's.
                "fake_fabric_dir": str(paths.root / "fake-fabric"),
            },
            indent=2,
        )
    )
    return agent_cfg


def server_key(settings: Settings, paths: StatePaths) -> bytes:
    """The key of the EC2 access keys' secrets: `[ec2] server_key_file`, else DIR/server.key
    (made at the first start). API processes of one cloud must share it."""
    key_file = settings.ec2.server_key_file
    return load_server_key(Path(key_file) if key_file else paths.server_key)


def register_images(svc: Services) -> None:
    from cumulo.images.tiny import ensure_tiny_image

    for arch in svc.settings.host.architectures:
        def building(arch: Arch = arch) -> None:
            _say(f"building the built-in image tiny/{arch.value} (a few minutes, once)")

        images.register_builtin(svc, ensure_tiny_image(arch, on_build=building))


class AgentSupervisor:
    """Runs the local agent (or the edge: `module`) as a child process and restarts it if it
    dies."""

    def __init__(self, config: Path, log_path: Path, module: str = "cumulo.agent") -> None:
        self.config = config
        self.log_path = log_path
        self.module = module
        self.proc: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                # --parent-pid: the agent stops if `cumulo up` is killed, so that the next
                # `cumulo up` never runs a second agent beside it (agent/host_lock.py).
                # Spawned from the event loop's thread, the main one: see exit_with_parent.
                [sys.executable, "-m", self.module, "--config", str(self.config),
                 "--parent-pid", str(os.getpid())],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            if self.proc is not None and self.proc.poll() is not None and not self._stopping:
                what = self.module.removeprefix("cumulo.")
                _say(f"{what} exited with {self.proc.returncode}; restarting it")
                await asyncio.sleep(1.0)
                self._spawn()

    def start(self) -> None:
        self._spawn()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                self.proc.kill()


# How often `cumulo up` says what it still waits for before it is ready.
READY_NAG_S = 30.0


def _hosts_registered(svc: Services, names: list[str], since: datetime) -> bool:
    """Every host registered (or heartbeat) since `since`, as it does when its agent starts: a
    row left "up" by the previous run does not count."""
    with svc.db.session() as s:
        seen = dict(s.execute(select(HostRow.name, HostRow.last_seen)
                              .where(HostRow.name.in_(names), HostRow.state == "up")).all())
    return all(n in seen and seen[n] >= since for n in names)


async def _announce_ready(svc: Services, hosts: list[LocalHostPlan], since: datetime,
                          client_config: Path) -> None:
    """Say `ready` once the local hosts can take instances, not when the API answers: a create
    sent before an agent registered would fail with insufficient_capacity."""
    names = [h.name for h in hosts]
    waited = 0.0
    while not await asyncio.to_thread(_hosts_registered, svc, names, since):
        await asyncio.sleep(0.2)
        waited += 0.2
        if waited >= READY_NAG_S:
            _say(f"still waiting for hosts {', '.join(names)} to register (see their agent.log)")
            waited = 0.0
    up = ", ".join(f"{h.name} is up in zone {h.zone}" for h in hosts)
    _say(f"ready: host {up}; try `CUMULO_CONFIG={client_config} cumulo zone list`")


def run(
    state_dir: Path, port: int, config: Path | None = None, database_url: str | None = None,
    hosts: int | None = None, baremetal_nodes: int = 0,
) -> None:
    paths = StatePaths(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = _hold_state_dir(paths)
    try:
        _run_locked(paths, port, config, database_url, hosts, baremetal_nodes)
    finally:
        lock.release(unlink=True)


def _run_locked(
    paths: StatePaths, port: int, config: Path | None, database_url: str | None,
    count: int | None, baremetal_nodes: int = 0,
) -> None:
    settings = load_settings(config or paths.config)
    hosts = plan_hosts(settings, hosts_to_run(paths, count))
    db = Database(database_url or f"sqlite:///{paths.database}")
    url, agent_cfgs = prepare(paths, settings, db, port, hosts)
    edge_at = edge_process.address(settings.network.underlay_cidr)
    asyncio.run(fabric.ensure(paths.root, [
        *(fabric.Port(paths.host_dir(h.name), h.underlay) for h in hosts if h.underlay),
        fabric.Port(edge_process.edge_dir(paths), edge_at)]))
    if baremetal_nodes:
        settings = deploy_settings(settings, url)
    svc = Services(
        db=db, settings=settings, notifier=Notifier(), image_store=paths.root / "images",
        server_key=server_key(settings, paths),
    )
    register_images(svc)
    supervisors = [AgentSupervisor(cfg, cfg.parent / "agent.log") for cfg in agent_cfgs]
    edge_dir = edge_process.edge_dir(paths)
    supervisors.append(AgentSupervisor(edge_dir / "edge.json", edge_dir / "edge.log",
                                       module="cumulo.edge"))
    lab = None
    if baremetal_nodes:
        # The nodes stand in the first zone, cabled to its first local host (if it has one).
        cabled = next((h.name for h in hosts if h.zone == settings.zone_names()[0]), None)
        lab = Lab(paths.root, baremetal_nodes, cabled,
                  None if cabled is None else netns_name(paths.host_dir(cabled)))

    @contextlib.asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        # The API's own worker threads and what it runs beside its requests (host sweeps,
        # heartbeat flusher, bare-metal conductor): this lifespan replaces the app's.
        async with threads.lifespan(served), app_mod.background(svc):
            started = datetime.now(UTC)
            for supervisor in supervisors:
                supervisor.start()
            if lab is not None:
                # Enrolled once its emulator listens: the conductor would find it silent.
                lab.start(port)
                await asyncio.to_thread(lab.wait_listening)
                for name in await asyncio.to_thread(lab.enroll_missing, svc):
                    _say(f"bare-metal node {name} enrolled (its BMC: {lab.url()})")
            _say(f"API on {url}; client config in {paths.client_config}")
            ready = asyncio.create_task(
                _announce_ready(svc, hosts, started, paths.client_config))
            try:
                yield
            finally:
                ready.cancel()
                await asyncio.gather(*(s.stop() for s in supervisors))
                if lab is not None:
                    await asyncio.to_thread(lab.stop)
                _say("stopped (VMs keep running; `cumulo down` stops them)")

    app = create_app(svc)
    app.router.lifespan_context = lifespan
    try:
        server.serve(app, svc.notifier, port)
    finally:
        db.dispose()
