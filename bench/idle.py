"""Idle cost: CPU of the API and the agent with N running VMs and nothing happening.

N `tiny` x86_64 t1.nano instances (50; 10 with --quick) are created in batches of 10 and each
must answer `ssh ... true` at its public loopback IP. After 10 s (5 s) of settling, the CPU time
(utime + stime from /proc) of the API (`cumulo up`, which also runs the scheduler) and of
the agent process is read over a window of 60 s (15 s with --quick), with no request made.
Promise: API + agent < 2 % of one core (`cpu_percent`; 100 % = one core). Also reported,
apart: the CPU of the QEMU processes (the guests themselves idling under TCG) and of the
dnsmasq processes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bench.cloud import BenchCloud, cpu_s, running_cloud, wait_running, wait_ssh

ARCH = "x86_64"
BATCH = 10


def vm_count(quick: bool) -> int:
    return 10 if quick else 50


def window_s(quick: bool) -> float:
    return 15.0 if quick else 60.0


def percent(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU seconds over a wall-clock window, as % of one core (pure)."""
    return 100.0 * cpu_seconds / wall_seconds if wall_seconds > 0 else 0.0


def _dnsmasq_pids(cloud: BenchCloud) -> list[int]:
    pids = []
    for f in cloud.state_dir.glob("hosts/*/net/dnsmasq/*/dnsmasq.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(f.read_text().strip()))
    return pids


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            total += cpu_s(p)
    return total


def run(quick: bool) -> dict[str, Any]:
    n = vm_count(quick)
    win = window_s(quick)
    out: dict[str, Any] = {"vms": n, "window_s": win, "arch": ARCH}
    with running_cloud(vcpus=1024, ram_mib=20480) as cloud:
        out["accelerator"] = cloud.accel()
        assert cloud.key_file is not None
        names = [f"idle-{i:03d}" for i in range(n)]
        t = time.monotonic()
        for b in range(0, n, BATCH):
            batch = names[b:b + BATCH]
            for name in batch:
                cloud.create(name, ARCH)
            views = wait_running(cloud, batch, 300)
            for name in batch:
                wait_ssh(cloud.key_file, f"cumulo@{views[name]['public_ip']}", 300, step=0.2)
        out["boot_all_s"] = round(time.monotonic() - t, 1)
        assert cloud.proc is not None
        api, agent = cloud.proc.pid, cloud.agent_pid()
        assert agent is not None, "no agent process"
        qemus = [p for p in (cloud.qemu_pid(i["id"]) for i in cloud.instances()) if p]
        dns = _dnsmasq_pids(cloud)
        cloud.http.close()  # nothing of ours talks to the API during the window
        cloud._http = None
        time.sleep(5 if quick else 10)
        t0 = time.monotonic()
        a0, g0, q0, d0 = cpu_s(api), cpu_s(agent), _cpu(qemus), _cpu(dns)
        time.sleep(win)
        a1, g1, q1, d1 = cpu_s(api), cpu_s(agent), _cpu(qemus), _cpu(dns)
        wall = time.monotonic() - t0
        out.update({
            "cpu_percent": round(percent(a1 - a0 + g1 - g0, wall), 2),
            "api_cpu_percent": round(percent(a1 - a0, wall), 2),
            "agent_cpu_percent": round(percent(g1 - g0, wall), 2),
            "qemu_cpu_percent_total": round(percent(q1 - q0, wall), 1),
            "qemu_cpu_percent_per_vm": round(percent(q1 - q0, wall) / max(1, len(qemus)), 2),
            "dnsmasq_cpu_percent": round(percent(d1 - d0, wall), 2),
            "qemu_processes": len(qemus),
            "promise": "< 2 % of one core (API + agent)",
        })
        out["promise_met"] = out["cpu_percent"] < 2.0
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
