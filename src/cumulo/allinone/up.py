"""`cumulo up`: API + scheduler + one local agent in the foreground.

The agent runs as a child process and talks to the API over HTTP exactly as a remote host
would. SIGTERM/SIGINT stop the API and the agent, never the VMs: those are re-adopted next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import structlog
import tomli_w
from fastapi import FastAPI
from sqlalchemy import select

from cumulo.allinone.paths import StatePaths, write_private
from cumulo.api import server, threads
from cumulo.api.app import create_app
from cumulo.config import Settings, load_settings
from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.db.tables import HostRow, TokenRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict
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


def prepare(paths: StatePaths, settings: Settings, db: Database, port: int) -> tuple[str, Path]:
    """Schema, default project, tokens, client.toml, agent config. Returns (url, agent config)."""
    upgrade(db)
    url = f"http://127.0.0.1:{port}"
    admin = _read_token(paths.client_config)
    host = settings.host
    host_dir = paths.host_dir(host.name)
    token_file = host_dir / "agent.token"
    agent_token = token_file.read_text().strip() if token_file.exists() else None
    with db.session() as s:
        ensure_default_project(s)
    if admin is None or not _token_valid(db, admin):
        with db.session() as s:
            admin = issue_token(s, Role.ADMIN, description="created by cumulo up")
    if agent_token is None or not _token_valid(db, agent_token):
        with db.session() as s:
            agent_token = issue_token(s, Role.AGENT, host_name=host.name, description="local agent")
        write_private(token_file, agent_token + "\n")
    write_private(paths.client_config, tomli_w.dumps({"url": url, "token": admin}))
    agent_cfg = host_dir / "agent.json"
    agent_cfg.write_text(
        json.dumps(
            {
                "api_url": url,
                "token_file": str(token_file),
                "host_dir": str(host_dir),
                "name": host.name,
                "zone": host.zone,
                "vcpus": host.vcpus,
                "ram_mib": host.ram_mib,
                "driver": host.driver,
                "accel": host.accel,
                "architectures": [a.value for a in host.architectures],
                "stop_timeout_s": host.stop_timeout_s,
            },
            indent=2,
        )
    )
    return url, agent_cfg


def register_images(svc: Services) -> None:
    from cumulo.images.tiny import ensure_tiny_image

    for arch in svc.settings.host.architectures:
        def building(arch: Arch = arch) -> None:
            _say(f"building the built-in image tiny/{arch.value} (a few minutes, once)")

        images.register_builtin(svc, ensure_tiny_image(arch, on_build=building))


class AgentSupervisor:
    """Runs the local agent as a child process and restarts it if it dies."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                # --parent-pid: the agent stops if `cumulo up` is killed, so that the next
                # `cumulo up` never runs a second agent beside it (agent/host_lock.py).
                # Spawned from the event loop's thread, the main one: see exit_with_parent.
                [sys.executable, "-m", "cumulo.agent", "--config", str(self.config),
                 "--parent-pid", str(os.getpid())],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            if self.proc is not None and self.proc.poll() is not None and not self._stopping:
                _say(f"agent exited with {self.proc.returncode}; restarting it")
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


def _host_registered(svc: Services, name: str, since: datetime) -> bool:
    """The host registered (or heartbeat) since `since`, as it does when its agent starts: a
    row left "up" by the previous run does not count."""
    with svc.db.session() as s:
        seen = s.scalar(select(HostRow.last_seen).where(HostRow.name == name,
                                                        HostRow.state == "up"))
    return seen is not None and seen >= since


async def _announce_ready(svc: Services, since: datetime, client_config: Path) -> None:
    """Say `ready` once the local host can take instances, not when the API answers: a create
    sent before the agent registered would fail with insufficient_capacity."""
    host = svc.settings.host
    waited = 0.0
    while not await asyncio.to_thread(_host_registered, svc, host.name, since):
        await asyncio.sleep(0.2)
        waited += 0.2
        if waited >= READY_NAG_S:
            _say(f"still waiting for host {host.name} to register (see its agent.log)")
            waited = 0.0
    _say(f"ready: host {host.name} is up in zone {host.zone}; try "
         f"`CUMULO_CONFIG={client_config} cumulo zone list`")


def run(
    state_dir: Path, port: int, config: Path | None = None, database_url: str | None = None
) -> None:
    paths = StatePaths(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = _hold_state_dir(paths)
    try:
        _run_locked(paths, port, config, database_url)
    finally:
        lock.release(unlink=True)


def _run_locked(
    paths: StatePaths, port: int, config: Path | None, database_url: str | None
) -> None:
    settings = load_settings(config or paths.config)
    db = Database(database_url or f"sqlite:///{paths.database}")
    url, agent_cfg = prepare(paths, settings, db, port)
    key_file = settings.ec2.server_key_file
    svc = Services(
        db=db, settings=settings, notifier=Notifier(), image_store=paths.root / "images",
        server_key=load_server_key(Path(key_file) if key_file else paths.server_key),
    )
    register_images(svc)
    supervisor = AgentSupervisor(agent_cfg, paths.host_dir(settings.host.name) / "agent.log")

    @contextlib.asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        async with threads.lifespan(served):  # the API's own (its worker threads)
            started = datetime.now(UTC)
            supervisor.start()
            _say(f"API on {url}; client config in {paths.client_config}")
            ready = asyncio.create_task(_announce_ready(svc, started, paths.client_config))
            try:
                yield
            finally:
                ready.cancel()
                await supervisor.stop()
                _say("stopped (VMs keep running; `cumulo down` stops them)")

    app = create_app(svc)
    app.router.lifespan_context = lifespan
    try:
        server.serve(app, svc.notifier, port)
    finally:
        db.dispose()
