"""A real all-in-one cloud per test: `cumulo up` as a subprocess, driven through the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import free_port, running

CUMULO = [sys.executable, "-m", "cumulo.cli.main"]


@dataclass
class Cloud:
    state_dir: Path
    port: int
    config: str
    proc: subprocess.Popen[bytes] | None = None
    up_args: list[str] = field(default_factory=list)  # more options of `cumulo up`
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.state_dir / "up.log"
        (self.state_dir / "cumulo.toml").write_text(self.config)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CUMULO_CONFIG"] = str(self.state_dir / "client.toml")
        env.pop("CUMULO_URL", None)
        env.pop("CUMULO_TOKEN", None)
        return env

    @property
    def hosts(self) -> int:
        return int(self.up_args[self.up_args.index("--hosts") + 1]) if "--hosts" in self.up_args \
            else 1

    def spawn(self) -> None:
        """Start `cumulo up` without waiting for anything."""
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*CUMULO, "up", "--state-dir", str(self.state_dir), "--port", str(self.port),
                 *self.up_args],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def start(self, timeout: float = 600) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"cumulo up exited: {self.log.read_text()[-3000:]}")
            try:
                zones = self.get("/v1/zones")
                # `cumulo up` says "ready" from its own check, a moment after the API shows
                # the hosts up: a test that reads the log must find the line there.
                if (sum(h["state"] == "up" for z in zones for h in z["hosts"]) >= self.hosts
                        and "ready: host" in self.log.read_text()[offset:]):
                    return
            except (AssertionError, httpx.HTTPError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"cloud not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM `cumulo up` (as an operator would); VMs must keep running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL `cumulo up`, as the OOM killer would: no clean-up of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*CUMULO, *args], env=self.env, capture_output=True, text=True,
                           timeout=900)
        if check and r.returncode != 0:
            raise AssertionError(f"cumulo {' '.join(args)} failed ({r.returncode}): "
                                 f"{r.stderr}\n{r.stdout}")
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("-o", "json", *args).stdout)

    def get(self, path: str, *names: str) -> Any:
        """What `cumulo -o json` shows for a GET (the admin's URL and token from client.toml,
        each name one path segment; a text answer as text), read in this process. The
        harness's waits poll through it: a CLI process per poll took ~0.7 s of CPU, which
        the cloud starting and the TCG guests being waited for lacked on 2 cores."""
        try:
            cfg = tomllib.loads((self.state_dir / "client.toml").read_text())
            base, token = cfg["url"], cfg["token"]
        except (OSError, ValueError, KeyError) as e:
            raise AssertionError(f"no client config yet: {e}") from e
        url = base + path.format(*(quote(n, safe="") for n in names))
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code >= 400:
            raise AssertionError(f"GET {url} failed ({r.status_code}): {r.text}")
        if r.headers.get("content-type", "").startswith("text/plain"):
            return r.text
        return r.json()

    def wait_state(self, name: str, state: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.get("/v1/instances/{}", name)
            if last["state"] == state:
                return last
            time.sleep(0.2)
        raise AssertionError(f"{name} not {state} after {timeout}s: {last}")


def _config(driver: str) -> str:
    # Each test cloud gets its own loopback public pool: another cloud on this machine (a
    # developer's `cumulo up`) may hold addresses of the default 127.100.0.0/16.
    second_octet = random.randint(101, 254)
    return (
        "[network]\n"
        f'public_pool = "127.{second_octet}.0.0/16"\n'
        "[host]\n"
        'name = "local"\n'
        f'driver = "{driver}"\n'
        'accel = "auto"\n'
        "vcpus = 16\n"
        "ram_mib = 4096\n"
        "stop_timeout_s = 20\n"
    )


def _make(driver: str, up_args: list[str] | None = None) -> Iterator[Cloud]:
    # Short path on purpose: QMP unix sockets live under it (108-byte limit).
    state = Path(tempfile.mkdtemp(prefix="cmo-", dir="/tmp"))
    cloud = Cloud(state_dir=state, port=free_port(), config=_config(driver),
                  up_args=up_args or [])
    try:
        yield cloud
    finally:
        cloud.stop()
        for pid in agent_pids(state):  # only if a test failed while its agent was orphaned
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        subprocess.run([*CUMULO, "down", "--state-dir", str(state)], capture_output=True,
                       timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def fake_cloud() -> Iterator[Cloud]:
    for cloud in _make("fake"):
        cloud.start()
        yield cloud


@pytest.fixture
def fake_cloud_3() -> Iterator[Cloud]:
    """Three simulated hosts: two in local-1a, one in local-1b."""
    for cloud in _make("fake", ["--hosts", "3"]):
        cloud.start()
        yield cloud


@pytest.fixture
def qemu_cloud_3() -> Iterator[Cloud]:
    """Three simulated hosts running real VMs: two in local-1a, one in local-1b."""
    for cloud in _make("qemu", ["--hosts", "3"]):
        cloud.start()
        yield cloud


@pytest.fixture
def qemu_cloud() -> Iterator[Cloud]:
    for cloud in _make("qemu"):
        cloud.start()
        yield cloud


def qemu_pids(state_dir: Path) -> dict[str, int]:
    """vm_id -> pid of the live QEMU processes of this cloud (read from their pidfiles)."""
    out = {}
    for pidfile in state_dir.glob("hosts/*/run/*/qemu.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):  # gone, or being written (a VM starting)
            continue
        if str(state_dir).encode() in cmd:
            out[pidfile.parent.name] = pid
    return out


def agent_pids(state_dir: Path, module: bytes = b"cumulo.agent") -> set[int]:
    """The pids of the running agent processes of this cloud (`module`: or of its edge)."""
    out = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if module in cmd and str(state_dir).encode() in cmd and running(int(proc.name)):
            out.add(int(proc.name))
    return out


def wait_agents_gone(pids: set[int], state_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while agent_pids(state_dir) & pids:
        if time.monotonic() > deadline:
            raise AssertionError(f"agents {pids} still run {timeout} s after `cumulo up` died")
        time.sleep(0.1)


def wait_one_agent(state_dir: Path, timeout: float) -> int:
    """The pid of this cloud's one agent, once `cumulo up` has started it."""
    deadline = time.monotonic() + timeout
    while not (pids := agent_pids(state_dir)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no agent runs {timeout} s after `cumulo up` started")
        time.sleep(0.1)
    assert len(pids) == 1, f"several agents for one host: {pids}"
    return pids.pop()
