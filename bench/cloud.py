"""Shared pieces of the VM sections: a real `cumulo up` in a subprocess, SSH probing, /proc.

`BenchCloud` runs the all-in-one cloud on a temporary state dir (short, under /tmp: QMP socket
paths are limited to 108 bytes) and a free loopback port, exactly as the integration tests do,
and talks to it over its HTTP API with the admin token from the client.toml it writes. VM
traffic only goes to the instances' public loopback addresses (the edge's forwarder) or, for
the floor, into a namespace the bench creates itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CUMULO = [sys.executable, "-m", "cumulo.cli.main"]
ZONE = "local-1a"
SSH_OPTS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- pure helpers (unit-tested) ------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 100))
    return s[int(rank) - 1]


def parse_status_kib(text: str, key: str = "VmRSS") -> int:
    """A `kB` field of /proc/<pid>/status (e.g. VmRSS), in KiB; 0 when absent."""
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else 0


def parse_smaps_rss(text: str, size_kib: int) -> int:
    """Sum of `Rss` (KiB) of the mappings of /proc/<pid>/smaps whose Size is `size_kib`: QEMU
    maps guest RAM as one anonymous region of exactly the guest's RAM size."""
    total = 0
    size = None
    for line in text.splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:") and size == size_kib:
            total += int(line.split()[1])
            size = None
    return total


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parse_stat_start_ticks(text: str) -> int:
    """starttime (clock ticks after boot) from the text of /proc/<pid>/stat."""
    return int(text.rsplit(")", 1)[1].split()[19])


# --- /proc ---------------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    return parse_status_kib(Path(f"/proc/{pid}/status").read_text())


def cpu_s(pid: int) -> float:
    return parse_stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK


def tree_cpu_s(pid: int) -> float:
    """CPU of a process plus its live descendants (not of children already reaped)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += cpu_s(p)
    return total


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = [int(k) for k in (t / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def process_start_monotonic(pid: int) -> float:
    """When the process started, on the time.monotonic() clock (10 ms resolution).
    Both come from CLOCK_MONOTONIC-like boot-relative clocks; /proc/uptime ties them."""
    start = parse_stat_start_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.monotonic() - (uptime - start)


def mem_available_mib() -> int:
    return parse_status_kib(Path("/proc/meminfo").read_text(), "MemAvailable") // 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def image_dir(arch: str) -> Path:
    from cumulo.images.tiny import default_cache_dir
    return default_cache_dir() / "tiny" / arch


def requested_accel() -> str:
    """The accelerator asked for (`auto` proves KVM runs a guest before using it)."""
    return os.environ.get("CUMULO_BENCH_ACCEL", "auto")


# --- SSH readiness ---------------------------------------------------------------------------

def ssh_once(argv_prefix: Sequence[str], key: Path, target: str) -> bool:
    r = subprocess.run([*argv_prefix, "ssh", *SSH_OPTS, "-i", str(key), target, "true"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
    return r.returncode == 0


def wait_ssh(key: Path, target: str, timeout: float, prefix: Sequence[str] = (),
             step: float = 0.05) -> float:
    """Poll `ssh ... true` until it succeeds; returns time.monotonic() of that success."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            if ssh_once(prefix, key, target):
                return time.monotonic()
        time.sleep(step)
    raise TimeoutError(f"no SSH to {target} within {timeout:.0f} s")


class LineWatch:
    """Timestamps (monotonic) of the first appearance of marker strings in a growing file."""

    def __init__(self, path: Path, markers: Sequence[str]) -> None:
        self.path = path
        self.markers = list(markers)
        self.seen: dict[str, float] = {}
        self._pos = 0
        self._buf = ""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        self._pos += len(data)
        text = self._buf + data.decode(errors="replace")
        now = time.monotonic()
        for m in self.markers:
            if m not in self.seen and m in text:
                self.seen[m] = now
        self._buf = text[-256:]


# --- the cloud -----------------------------------------------------------------------------

def listening_loopback_octets(proc_net_tcp: str) -> set[int]:
    """Second octets of the 127.x.0.0/16 slices with a listening TCP socket (pure; the text of
    /proc/net/tcp: addresses are little-endian hex, state 0A = LISTEN)."""
    octets = set()
    for line in proc_net_tcp.splitlines()[1:]:
        f = line.split()
        if len(f) > 3 and f[3] == "0A":
            addr = bytes.fromhex(f[1].split(":")[0])[::-1]
            if addr[0] == 127:
                octets.add(addr[1])
    return octets


_POOLS_GIVEN: set[int] = set()


def free_public_pool() -> str:
    """A loopback /16 no other cloud on this machine listens in (every all-in-one cloud
    defaults to 127.100.0.0/16: two of them would fight over the same public IPs)."""
    used = listening_loopback_octets(Path("/proc/net/tcp").read_text()) | _POOLS_GIVEN
    for octet in range(180, 250):
        if octet not in used:
            _POOLS_GIVEN.add(octet)  # several clouds of one bench run: none listens yet
            return f"127.{octet}.0.0/16"
    raise RuntimeError("no free 127.x.0.0/16 slice for the bench cloud's public IPs")


def _config(accel: str, vcpus: int, ram_mib: int, public_pool: str,
            tb_size_mib: int | None = None) -> str:
    return (
        "[network]\n"
        f'public_pool = "{public_pool}"\n'
        "[host]\n"
        'name = "local"\n'
        'driver = "qemu"\n'
        f'accel = "{accel}"\n'
        f"vcpus = {vcpus}\n"
        f"ram_mib = {ram_mib}\n"
        "stop_timeout_s = 5\n"
        + (f"tcg_tb_size_mib = {tb_size_mib}\n" if tb_size_mib is not None else "")
    )


@dataclass
class BenchCloud:
    """`cumulo up` in a subprocess on a temporary state dir; its API over HTTP."""

    vcpus: int = 64
    ram_mib: int = 16384
    tb_size_mib: int | None = None  # [host] tcg_tb_size_mib (None: cumulo's default)
    hosts: int = 1  # `cumulo up --hosts N` (more than one: all in one zone)
    state_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cmb-",
                                                                           dir="/tmp")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    key_file: Path | None = None
    _http: httpx.Client | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CUMULO_CONFIG"] = str(self.state_dir / "client.toml")
        env.pop("CUMULO_URL", None)
        env.pop("CUMULO_TOKEN", None)
        return env

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.base, timeout=60.0,
                                      headers={"Authorization": f"Bearer {self.token}"})
        return self._http

    def start(self, timeout: float = 300) -> None:
        # Each VM's QEMU runs as a uid of its own and must reach its disk under the state dir
        # (mkdtemp makes it 0700): searchable, not listable.
        os.chmod(self.state_dir, 0o711)
        (self.state_dir / "cumulo.toml").write_text(
            _config(requested_accel(), self.vcpus, self.ram_mib, free_public_pool(),
                    self.tb_size_mib)
            + (f'[[regions]]\nname = "local-1"\nzones = ["{ZONE}"]\n' if self.hosts > 1 else ""))
        hosts = ["--hosts", str(self.hosts)] if self.hosts > 1 else []
        with open(self.state_dir / "up.log", "ab") as logf:
            self.proc = subprocess.Popen(
                [*CUMULO, "up", "--state-dir", str(self.state_dir), "--port", str(self.port),
                 *hosts],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cumulo up exited: {self.log_tail()}")
            client = self.state_dir / "client.toml"
            if client.exists() and not self.token:
                self.token = str(tomllib.loads(client.read_text())["token"])
            if self.token and self.host().get("state") == "up":
                return
            time.sleep(0.2)
        raise RuntimeError(f"cloud not ready: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.state_dir / "up.log").read_text()[-n:]
        return ""

    def host(self) -> dict[str, Any]:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            r = self.http.get("/v1/zones", timeout=5)
            if r.status_code == 200:
                for z in r.json():
                    for h in z.get("hosts", []):
                        return dict(h)
        return {}

    def accel(self) -> str:
        return str(self.host().get("accel", "?"))

    def keypair(self, name: str = "bench") -> Path:
        out = subprocess.run([*CUMULO, "-o", "json", "keypair", "create", name], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True)
        self.key_file = Path(json.loads(out.stdout)["private_key_file"])
        return self.key_file

    def create(self, name: str, arch: str, *, type_: str | None = "t1.nano",
               ram_mib: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "image": "tiny", "arch": arch, "zone": ZONE,
                                "keys": ["bench"]}
        if ram_mib is not None:
            body.update(vcpus=1, ram_mib=ram_mib)
        else:
            body["type"] = type_
        r = self.http.post("/v1/instances", json=body)
        if r.status_code != 202:
            raise RuntimeError(f"create {name}: {r.status_code} {r.text[:300]}")
        return dict(r.json())

    def show(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/instances/{name}")
        r.raise_for_status()
        return dict(r.json())

    def instances(self) -> list[dict[str, Any]]:
        r = self.http.get("/v1/instances")
        r.raise_for_status()
        return list(r.json())

    def delete(self, name: str) -> None:
        self.http.delete(f"/v1/instances/{name}")

    def wait_gone(self, names: Sequence[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        left = set(names)
        while left and time.monotonic() < deadline:
            left &= {i["name"] for i in self.instances()}
            time.sleep(0.2)

    def qemu_pid(self, vm_id: str) -> int | None:
        for pidfile in self.state_dir.glob(f"hosts/*/run/{vm_id}/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if str(self.state_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        return None

    def console_log(self, vm_id: str) -> Path:
        return self.state_dir / "hosts" / "local" / "run" / vm_id / "console.log"

    def agent_pid(self) -> int | None:
        """The agent child of `cumulo up` (python -m cumulo.agent)."""
        if self.proc is None:
            return None
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if b"cumulo.agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        return None

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # `cumulo down` stops this cloud's VMs, dnsmasq and namespace (all by pidfile).
        subprocess.run([*CUMULO, "down", "--state-dir", str(self.state_dir)],
                       capture_output=True, timeout=300)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def running_cloud(vcpus: int = 64, ram_mib: int = 16384,
                  tb_size_mib: int | None = None, hosts: int = 1) -> Iterator[BenchCloud]:
    """A started cloud with a key pair `bench`; always stopped (`cumulo down`) afterwards,
    also on SIGTERM (background jobs ignore SIGINT)."""
    cloud = BenchCloud(vcpus=vcpus, ram_mib=ram_mib, tb_size_mib=tb_size_mib, hosts=hosts)
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cloud.start()
        cloud.keypair()
        yield cloud
    except BaseException:
        print(f"--- cumulo up (last lines) ---\n{cloud.log_tail()}", file=sys.stderr)
        raise
    finally:
        cloud.stop()
        signal.signal(signal.SIGTERM, old)


def wait_running(cloud: BenchCloud, names: Sequence[str], timeout: float) -> dict[str, Any]:
    """Wait until every named instance is running; returns name -> instance view."""
    deadline = time.monotonic() + timeout
    while True:
        views = {i["name"]: i for i in cloud.instances() if i["name"] in names}
        bad = [v for v in views.values() if v["state"] == "error"]
        if bad:
            raise RuntimeError(f"instance in error: {bad[0]}")
        if len(views) == len(names) and all(v["state"] == "running" for v in views.values()):
            return views
        if time.monotonic() > deadline:
            raise TimeoutError(f"instances not running after {timeout:.0f} s")
        time.sleep(0.25)
