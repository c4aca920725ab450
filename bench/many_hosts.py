"""Many simulated hosts, idle: what 100 and 1,000 hosts cost the API when nothing happens.

For each host count: a fresh SQLite database, the real API in its process and N simulated
hosts, 250 to an asyncio process (bench/cp_processes.py: the real agent loop, reconciler and fake
driver per host, each with its own token and long-poll), as in the control-plane section.
Once every host is registered and 5 s have passed, the CPU (utime + stime) and RSS of the API
and of the hosts' processes are read over a window (30 s; 15 s with --quick) with no request
but the hosts' own (long-polls, heartbeats, reports). Then, busy, the control-plane run
(bench.control_plane.measure, SQLite) with 1,000 hosts and 10,000 instances (1,000 with
--quick): saturation and the open loop at that scale. Not in the default sections (it is
not part of the --quick budget): `cumulo bench --only many_hosts`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import cp_http
from bench.cloud import free_port, rss_kib
from bench.control_plane import (
    ZONE,
    Probe,
    Scale,
    _cpu_s,
    _spawn,
    _stop,
    _wait,
    measure,
    prepare,
    spawn_hosts,
)

COUNTS = (100, 1000)


def idle(n: int, window_s: float, work: Path) -> dict[str, Any]:
    sc = Scale(instances=0, hosts=n)
    url = f"sqlite:///{work / 'cumulo.db'}"
    _, hosts = prepare(url, sc, work)
    base = f"http://127.0.0.1:{free_port()}"
    api = _spawn(["api", "--db", url, "--port", base.rsplit(":", 1)[1]], work / "api.log")
    probe = Probe(url)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        _wait(lambda: cp_http.healthy(base) or api.poll() is not None, 60, "the API", 0.1)
        t = time.monotonic()
        agents = spawn_hosts({"api_url": base, "zone": ZONE, "vcpus": sc.host_vcpus,
                              "ram_mib": sc.host_ram_mib, "work_dir": str(work / "hosts")},
                             hosts, work)
        _wait(lambda: probe.hosts() == n, 600, f"{n} hosts to register", 0.5)
        registered_s = time.monotonic() - t
        time.sleep(5)
        a0, g0, t0 = _cpu_s(api.pid), _hosts_cpu_s(agents), time.monotonic()
        down0 = probe.down()
        time.sleep(window_s)
        a1, g1, wall = _cpu_s(api.pid), _hosts_cpu_s(agents), time.monotonic() - t0
        api_mib = rss_kib(api.pid) / 1024
        return {
            "hosts": n,
            "register_all_s": round(registered_s, 1),
            "window_s": round(wall, 1),
            "api_cpu_percent": round(100 * (a1 - a0) / wall, 2),
            "api_cpu_percent_per_host": round(100 * (a1 - a0) / wall / n, 4),
            "hosts_processes_cpu_percent": round(100 * (g1 - g0) / wall, 2),
            "api_rss_mib": round(api_mib, 1),
            "hosts_processes": len(agents),
            "hosts_processes_rss_mib": round(sum(rss_kib(a.pid) for a in agents) / 1024, 1),
            # hosts the API counted down (no heartbeat within 12 s) at the window's ends
            "hosts_down": [down0, probe.down()],
        }
    finally:
        probe.close()
        for a in agents:
            _stop(a)
        _stop(api)


def _hosts_cpu_s(procs: list[subprocess.Popen[bytes]]) -> float:
    return sum(_cpu_s(p.pid) for p in procs)


def busy(n: int, quick: bool, work: Path) -> dict[str, Any]:
    """The control-plane section's measure (SQLite: closed loop, deletes, then the open loop
    at 25/50/80 % of its saturation) with n simulated hosts (issue 24 item 2)."""
    sc = Scale(instances=1_000 if quick else 10_000, hosts=n,
               open_loop_s=4.0 if quick else 10.0, timeout_s=1800.0)
    return measure(f"sqlite:///{work / 'cumulo.db'}", sc, work)


def run(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in COUNTS:
        with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
            out[str(n)] = idle(n, 15.0 if quick else 30.0, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
        out["busy"] = busy(COUNTS[-1], quick, Path(tmp))
    small, big = out[str(COUNTS[0])], out[str(COUNTS[-1])]
    if small["api_rss_mib"] and big["hosts"] > small["hosts"]:
        out["api_rss_kib_per_host"] = round(
            (big["api_rss_mib"] - small["api_rss_mib"]) * 1024 / (big["hosts"] - small["hosts"]),
            1)
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
