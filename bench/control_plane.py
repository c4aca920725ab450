"""Control plane: create N instances through the API with concurrent clients, until all run.

Setup (per database backend): a fresh database (SQLite file in a temp dir; a new PostgreSQL
database), the real API (uvicorn on 127.0.0.1, its own process), H simulated hosts (the real
agent loop and reconciler over the fake driver, 250 to a process, each with its own agent token
and HTTP long-poll). Then C concurrent HTTP clients create N `t1.nano` instances in one
project; the clock runs from the first create to the moment every instance is running, as
reported by the agents. Then every instance is deleted, until all are gone.

Reported: instances per second (N / that wall time), p50 / p99 latency of the create calls
as the clients saw them, the same for deletes, and the CPU the API process used.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, or_, select, text

from bench import cp_http, open_loop
from bench.cloud import free_port, percentile
from bench.cp_http import TYPE, ZONE
from cumulo.config import NetworkSettings, Settings
from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.db.tables import HostRow, InstanceRow
from cumulo.services import images, networks, quotas
from cumulo.services.auth import ensure_default_project, issue_token
from cumulo.services.context import Principal, Role, Services
from cumulo.services.hosts import HOST_DOWN_AFTER
from cumulo.services.notifier import Notifier

REPO = Path(__file__).resolve().parent.parent
__all__ = ["TYPE", "ZONE", "Scale", "measure", "percentile", "run"]


@dataclass(frozen=True)
class Scale:
    instances: int
    hosts: int = 100
    clients: int = 20
    host_vcpus: int = 64  # t1.nano: 1 vCPU, 128 MiB
    host_ram_mib: int = 16384
    timeout_s: float = 600.0
    open_loop_s: float = 0.0  # seconds of sending per open-loop phase (0: none)
    apis: int = 1  # API processes (more than one: PostgreSQL only, with its LISTEN/NOTIFY bus)


def scale(quick: bool) -> Scale:
    return Scale(instances=300 if quick else 2000, open_loop_s=4.0 if quick else 30.0)


# --quick on PostgreSQL: half the closed loop's instances. At its ~17-70 creates/s, 300 took
# half a minute of the quick run's 6 (creating and deleting), for a figure with no promise.
QUICK_PG_INSTANCES = 150


def postgres_url() -> str | None:
    """Where to create the PostgreSQL bench database (None: PostgreSQL is skipped)."""
    return os.environ.get("CUMULO_BENCH_POSTGRES_URL") or os.environ.get(
        "CUMULO_TEST_POSTGRES_URL"
    )


def run(quick: bool) -> dict[str, object]:
    sc = scale(quick)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
        out["sqlite"] = measure(f"sqlite:///{Path(tmp) / 'cumulo.db'}", sc, Path(tmp) / "sq")
    pg = postgres_url()
    if pg is None:
        out["postgresql_skipped"] = "set CUMULO_BENCH_POSTGRES_URL (or CUMULO_TEST_POSTGRES_URL)"
        return out
    with pg_database(pg) as url, tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
        out["postgresql"] = measure(
            url, replace(sc, instances=QUICK_PG_INSTANCES) if quick else sc, Path(tmp))
    if quick:
        out["postgresql_2_apis_skipped"] = "full run only (the --quick budget)"
        return out
    with pg_database(pg) as url, tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
        out["postgresql_2_apis"] = measure(url, replace(sc, apis=2), Path(tmp))
    return out


@contextmanager
def pg_database(server_url: str) -> Iterator[str]:
    """A fresh database on that server, dropped afterwards."""
    name = "cumulo_bench_" + secrets.token_hex(4)
    admin = create_engine(server_url.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _fake_image(root: Path) -> Path:
    """A built-in-like image record; the fake driver never opens its (empty) files."""
    d = root / "images" / "tiny" / "x86_64"
    d.mkdir(parents=True)
    for f in ("vmlinuz", "initrd.img", "rootfs.qcow2"):
        (d / f).write_bytes(b"")
    (d / "image.json").write_text(json.dumps({
        "name": "tiny", "arch": "x86_64", "boot": "kernel", "default_user": "cumulo",
        "kernel_cmdline": "console=ttyS0", "os": "bench", "virtual_size_bytes": 2**30,
    }))
    return d


# A project's default network is a /20 (4,094 addresses): a larger run (1,000 hosts' 10,000
# instances) gets a /16 one, made before the API starts.
DEFAULT_NETWORK_HOLDS = 4000


def prepare(url: str, sc: Scale, work: Path) -> tuple[str, list[dict[str, str]]]:
    """Schema, project, image, tokens. Returns (admin token, [{name, token}] per host)."""
    db = Database(url)
    try:
        upgrade(db)
        svc = Services(db=db, settings=Settings(), notifier=Notifier())
        with db.session() as s:
            ensure_default_project(s)
            admin = issue_token(s, Role.ADMIN, description="bench")
        images.register_builtin(svc, _fake_image(work))
        if sc.instances > DEFAULT_NETWORK_HOLDS:  # its default network, before the API makes
            big = Settings(network=NetworkSettings(default_prefix=16))  # a /20 of its own
            networks.ensure_defaults(replace(svc, settings=big), Principal(role=Role.ADMIN),
                                     "default", [ZONE])
        # Limits far above the run, as numbers: every create still pays for its quota check.
        quotas.set_limits(svc, Principal(role=Role.ADMIN), "default",
                          dict.fromkeys(quotas.UNITS, str(10**9)))
        hosts = []
        with db.session() as s:
            for i in range(sc.hosts):
                name = f"bench-h{i:03d}"
                hosts.append({"name": name, "token": issue_token(s, Role.AGENT, host_name=name)})
        return admin, hosts
    finally:
        db.dispose()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "bench.cp_processes", *args]
    prof = os.environ.get("CUMULO_BENCH_PYSPY")  # e.g. "/tmp/api.svg": profile the API
    if prof and args[0] == "api":
        fmt = ["--format", "raw"] if prof.endswith(".txt") else []  # collapsed stacks
        spy = str(Path(sys.executable).parent / "py-spy")
        argv = [spy, "record", "--gil", "-r", "250", *fmt, "-o", prof, "--", *argv]
    with open(log, "ab") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Simulated hosts per asyncio process. One process cannot heartbeat 1,000 agents every
# HOST_DOWN_AFTER (12 s) on a share of 2 cores: they flapped `down` (docs/benchmarks.md,
# 2026-12-07). 250 keeps the 100-host runs in one process, as their earlier figures were.
HOSTS_PER_PROCESS = 250


def spawn_hosts(base: dict[str, object], hosts: list[dict[str, str]],
                work: Path) -> list[subprocess.Popen[bytes]]:
    """The simulated hosts, HOSTS_PER_PROCESS to a process: `agents.json` / `agents.log`,
    then `agents1.json` / `agents1.log`, ... (`base`: what every host shares)."""
    procs = []
    for i, first in enumerate(range(0, len(hosts), HOSTS_PER_PROCESS)):
        cfg = work / f"agents{i or ''}.json"
        cfg.write_text(json.dumps(
            {**base, "hosts": hosts[first:first + HOSTS_PER_PROCESS]}))
        procs.append(_spawn(["agents", "--config", str(cfg)], work / f"agents{i or ''}.log"))
    return procs


def _api_pid(proc: subprocess.Popen[bytes]) -> int:
    """The API's own pid (under py-spy, its child)."""
    if not os.environ.get("CUMULO_BENCH_PYSPY"):
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for _ in range(100):
        kids = children.read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    return proc.pid


class Probe:
    """Counts instances straight in the database: the wait loop must not load the API."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)

    def hosts(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(HostRow)) or 0)

    def down(self) -> int:
        """Hosts the API counts down: marked so, or silent for HOST_DOWN_AFTER."""
        late = datetime.now(UTC) - HOST_DOWN_AFTER
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(HostRow).where(
                or_(HostRow.state == "down", HostRow.last_seen < late))) or 0)

    def counts(self) -> tuple[int, int]:
        """(instances, of which running)."""
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(InstanceRow)) or 0
            running = s.scalar(select(func.count()).select_from(InstanceRow)
                               .where(InstanceRow.state == "running")) or 0
            return int(total), int(running)

    def running_names(self) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(InstanceRow.name)
                                 .where(InstanceRow.state == "running")))

    def close(self) -> None:
        self.db.dispose()


def _wait(cond: object, timeout: float, what: str, step: float = 0.02) -> float:
    """Poll `cond()` until true; returns the perf_counter time it became true."""
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)
    return time.perf_counter()


def measure(url: str, sc: Scale, work: Path) -> dict[str, object]:
    """One full create/delete run (then the open-loop phases) against a fresh database."""
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    admin, hosts = prepare(url, sc, work)
    bases = [f"http://127.0.0.1:{free_port()}" for _ in range(sc.apis)]
    bus = ["--bus"] if sc.apis > 1 else []  # PostgreSQL LISTEN/NOTIFY between them
    logs = [work / f"api{i or ''}.log" for i in range(sc.apis)]  # api.log, api1.log, ...
    apis = [_spawn(["api", "--db", url, "--port", b.rsplit(":", 1)[1], *bus], log)
            for b, log in zip(bases, logs, strict=True)]
    agents: list[subprocess.Popen[bytes]] = []
    probe = Probe(url)
    api_pid = apis[0].pid
    try:
        for api, base, log in zip(apis, bases, logs, strict=True):
            _wait(lambda a=api, b=base: cp_http.healthy(b) or a.poll() is not None, 60,
                  "the API to start", 0.1)
            if api.poll() is not None:
                raise RuntimeError(f"the API exited: {log.read_text()[-2000:]}")
        for i, h in enumerate(hosts):
            h["api_url"] = bases[i % len(bases)]
        agents = spawn_hosts({"api_url": bases[0], "zone": ZONE, "vcpus": sc.host_vcpus,
                              "ram_mib": sc.host_ram_mib, "work_dir": str(work / "hosts")},
                             hosts, work)
        # 1,000 simulated hosts take minutes to register on a loaded 2-core machine
        _wait(lambda: probe.hosts() == sc.hosts, max(120, sc.hosts / 2), f"{sc.hosts} hosts "
              "to register", 0.5)
        time.sleep(1.5)  # every agent is in its long-poll now
        api_pid = _api_pid(apis[0])
        api_pids = [api_pid, *(a.pid for a in apis[1:])]

        def api_cpu() -> float:
            return sum(_cpu_s(pid) for pid in api_pids)

        def agents_cpu() -> float:
            return sum(_cpu_s(a.pid) for a in agents)

        def fire(method: str, names: list[str]) -> tuple[list[float], list[str], float]:
            return asyncio.run(cp_http.fire(bases, admin, sc.clients,
                                            [(method, n) for n in names]))

        names = [f"bench-{i:05d}" for i in range(sc.instances)]
        cpu0, agents_cpu0 = api_cpu(), agents_cpu()
        clients_cpu0 = _cpu_s(os.getpid())  # this process: the clients and the probe
        lat, errors, t0 = fire("POST", names)
        t_sent = time.perf_counter()
        created = sc.instances - len(errors)
        t_run = _wait(lambda: probe.counts()[1] >= created, sc.timeout_s, "all to run")
        cpu1, agents_cpu1 = api_cpu(), agents_cpu()
        clients_cpu1 = _cpu_s(os.getpid())
        shown = cp_http.shown_running(bases[-1], admin)
        create_wall = t_run - t0

        dlat, derrors, d0 = fire("DELETE", names)
        t_dsent = time.perf_counter()
        t_gone = _wait(lambda: probe.counts()[0] == 0, sc.timeout_s, "all to be deleted")
        cpu2 = api_cpu()
        delete_wall = t_gone - d0

        def delete_all(names: list[str]) -> None:
            errs = fire("DELETE", names)[1]
            if errs:
                raise RuntimeError(f"open-loop cleanup failed: {errs[:3]}")
            _wait(lambda: probe.counts()[0] == 0, sc.timeout_s, "all to be deleted")

        saturation = round(created / create_wall, 1)
        t_open = time.perf_counter()
        opened = open_loop.run_phases(
            bases, admin, saturation, sc.open_loop_s, cp_http.create_body,
            probe.running_names, delete_all, sc.timeout_s) if sc.open_loop_s > 0 else []
        # Where the section's time goes: setup (database, API, hosts registered), the closed
        # loop's creates and deletes, the open-loop phases (with their cleanup).
        phase_s = {"setup": t0 - began, "create": create_wall, "delete": t_gone - d0,
                   "open_loop": time.perf_counter() - t_open}
        return {
            "create_per_s": saturation,
            **cp_http.stats("", lat),
            "instances": sc.instances,
            "hosts": sc.hosts,
            "clients": sc.clients,
            "api_processes": sc.apis,
            "projects": 1,
            "create_errors": len(errors),
            "first_errors": errors[:3] + derrors[:3],
            "create_calls_s": round(t_sent - t0, 2),
            "create_to_all_running_s": round(create_wall, 2),
            "api_shows_running": shown,
            "api_cpu_s_create": round(cpu1 - cpu0, 2),
            "api_cpu_percent_create": round(100 * (cpu1 - cpu0) / create_wall, 1),
            "agents_cpu_s_create": round(agents_cpu1 - agents_cpu0, 2),
            "clients_cpu_s_create": round(clients_cpu1 - clients_cpu0, 2),
            "delete_per_s": round((sc.instances - len(derrors)) / delete_wall, 1),
            **cp_http.stats("delete_", dlat),
            "delete_errors": len(derrors),
            "delete_calls_s": round(t_dsent - d0, 2),
            "delete_to_all_gone_s": round(delete_wall, 2),
            "api_cpu_s_delete": round(cpu2 - cpu1, 2),
            "open_loop": opened,
            "phase_s": {k: round(v, 1) for k, v in phase_s.items()},
        }
    except BaseException:
        for name in (p.name for pattern in ("api*.log", "agents*.log")
                     for p in work.glob(pattern)):
            with suppress(OSError):
                tail = (work / name).read_text()[-3000:]
                print(f"--- {name} (last lines) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        probe.close()
        for a in agents:
            _stop(a)
        first = apis[0]
        if first.poll() is None and api_pid != first.pid:  # py-spy writes once its child exits
            os.kill(api_pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                first.wait(60)
        for api in apis:
            _stop(api)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.control_plane")
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    p.add_argument("--apis", type=int, default=1, help="API processes (PostgreSQL)")
    p.add_argument("--open-loop-s", type=float, default=0.0,
                   help="seconds per open-loop phase (0: none)")
    a = p.parse_args()
    s = Scale(instances=a.instances, hosts=a.hosts, clients=a.clients, apis=a.apis,
              open_loop_s=a.open_loop_s)
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
        if a.db == "sqlite":
            res = measure(f"sqlite:///{Path(tmp) / 'cumulo.db'}", s, Path(tmp))
        else:
            pg = postgres_url()
            assert pg, "set CUMULO_BENCH_POSTGRES_URL"
            with pg_database(pg) as u:
                res = measure(u, s, Path(tmp))
    print(json.dumps(res, indent=2))
