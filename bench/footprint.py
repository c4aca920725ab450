"""Footprint: memory per VM beyond guest RAM, agent memory per VM, how many tiny VMs fit.

The instances are the smallest `tiny` that boots: arm64, 1 vCPU, 64 MiB (x86_64 with this
kernel needs at least ~96 MiB). Instances are created in batches; a batch counts only once
every instance of it is running AND answers `ssh ... true` at its public loopback IP.

- `qemu_overhead_mib`: per QEMU process, RSS minus the resident part of the guest-RAM mapping
  (read from /proc/<pid>/smaps: the anonymous mapping of exactly the guest's RAM size), i.e.
  what QEMU itself costs on top of whatever the guest has touched; mean over the VMs.
  Also reported: `rss_minus_ram_mib` (RSS minus the nominal 64 MiB, the issue's formula) and
  `guest_resident_mib` (how much of its 64 MiB a booted tiny guest has touched).
- `agent_mib_per_vm`: (agent RSS with N VMs - agent RSS with none) / N.
- `max_tiny_instances`: full run: the ramp goes on in batches of 10 until a batch fails (not
  running or not SSH-reachable in time), memory runs short (MemAvailable < 1 GiB), or the
  time budget (25 min) or the cap (300) is hit; the count reached is reported, with the reason
  it stopped. --quick: 5 VMs only, and the count is an ESTIMATE (`max_tiny_estimated`):
  the memory bound (MemAvailable before the run - 1 GiB) / (QEMU RSS + agent memory per VM);
  next to it, `cpu_saturation_vms` = cores x 100 % / the idle CPU of one VM (past that
  point idle guests compete for the cores: slower, not unreachable).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from statistics import mean
from typing import Any

from bench.cloud import (
    BenchCloud,
    cpu_s,
    mem_available_mib,
    parse_smaps_rss,
    rss_kib,
    running_cloud,
    wait_running,
    wait_ssh,
)
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB, accel_option

ARCH = "arm64"
RAM_MIB = 64
RESERVE_MIB = 1024
BATCH = 10


def qemu_memory(pid: int, ram_mib: int = RAM_MIB) -> dict[str, float]:
    rss = rss_kib(pid) / 1024
    guest = parse_smaps_rss(Path(f"/proc/{pid}/smaps").read_text(), ram_mib * 1024) / 1024
    return {"rss_mib": rss, "guest_resident_mib": guest, "overhead_mib": rss - guest}


def _boot_batch(cloud: BenchCloud, names: list[str], timeout: float) -> dict[str, Any]:
    assert cloud.key_file is not None
    for n in names:
        cloud.create(n, ARCH, ram_mib=RAM_MIB)
    views = wait_running(cloud, names, timeout)
    deadline = time.monotonic() + timeout
    for n in names:
        wait_ssh(cloud.key_file, f"cumulo@{views[n]['public_ip']}",
                 max(5.0, deadline - time.monotonic()), step=0.2)
    return views


def estimate_max(mem_available: float, per_vm_mib: float, cores: int,
                 vm_idle_cpu_percent: float) -> dict[str, int]:
    """The memory bound on the number of VMs (the estimate: memory is not overcommitted),
    and how many idle VMs saturate the cores (beyond it guests slow down, they do not fail)
    (pure)."""
    mem = int(max(0.0, mem_available - RESERVE_MIB) // per_vm_mib) if per_vm_mib > 0 else 0
    cpu = int(cores * 100 // vm_idle_cpu_percent) if vm_idle_cpu_percent > 0 else 0
    return {"memory_bound": mem, "cpu_saturation_vms": cpu, "estimate": mem}


def run(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"arch": ARCH, "ram_mib": RAM_MIB}
    total_ram_mib = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20)
    with running_cloud(vcpus=4096, ram_mib=total_ram_mib) as cloud:
        out["accelerator"] = "tcg"  # arm64 guests on this x86_64 host: always TCG
        out["accel"] = accel_option("tcg", DEFAULT_TB_SIZE_MIB)  # the cloud's default
        time.sleep(3)
        agent = cloud.agent_pid()
        assert agent is not None, "no agent process"
        agent0 = rss_kib(agent) / 1024
        mem0 = mem_available_mib()
        count, stopped, batch_times = 0, "", []
        start = time.monotonic()
        limit_vms = 5 if quick else 300
        budget_s = 25 * 60
        while count < limit_vms:
            size = min(BATCH if not quick else 5, limit_vms - count)
            names = [f"fp-{i:03d}" for i in range(count, count + size)]
            t = time.monotonic()
            try:
                _boot_batch(cloud, names, timeout=120 + 10 * size)
            except (TimeoutError, RuntimeError) as e:
                stopped = f"batch {names[0]}..: {e}"
                break
            count += size
            batch_times.append(round(time.monotonic() - t, 1))
            if mem_available_mib() < RESERVE_MIB:
                stopped = "MemAvailable below 1 GiB"
                break
            if time.monotonic() - start > budget_s:
                stopped = "time budget (25 min) reached"
                break
        else:
            stopped = f"cap of {limit_vms} reached"
        time.sleep(5)
        mems = []
        for i in cloud.instances():
            pid = cloud.qemu_pid(i["id"])
            if pid is not None:
                with contextlib.suppress(OSError):
                    mems.append(qemu_memory(pid))
        agent1 = rss_kib(agent) / 1024
        # idle CPU of the VMs (for the estimate): their CPU time over 10 s (5 s with --quick:
        # its only use there is `cpu_saturation_vms`, and the quick run has 6 minutes)
        pids = [p for p in (cloud.qemu_pid(i["id"]) for i in cloud.instances()) if p]
        c0 = sum(cpu_s(p) for p in pids)
        idle_s = 5 if quick else 10
        time.sleep(idle_s)
        vm_cpu = 100 * (sum(cpu_s(p) for p in pids) - c0) / idle_s / max(1, len(pids))
        per_vm = mean(m["rss_mib"] for m in mems) if mems else 0.0
        out.update({
            "qemu_overhead_mib": round(mean(m["overhead_mib"] for m in mems), 1),
            "rss_mib": round(per_vm, 1),
            "rss_minus_ram_mib": round(per_vm - RAM_MIB, 1),
            "guest_resident_mib": round(mean(m["guest_resident_mib"] for m in mems), 1),
            "agent_mib_per_vm": round((agent1 - agent0) / max(1, count), 2),
            "agent_rss_mib": {"before": round(agent0, 1), "after": round(agent1, 1)},
            "instances_booted": count,
            "stopped_because": stopped,
            "batch_seconds": batch_times,
            "mem_available_mib": {"before": mem0, "after": mem_available_mib()},
            "vm_idle_cpu_percent": round(vm_cpu, 2),
        })
        est = estimate_max(mem0, per_vm + out["agent_mib_per_vm"], os.cpu_count() or 1,
                           vm_cpu)
        out["max_tiny_estimated"] = est
        out["max_tiny_instances"] = est["estimate"] if quick else count
        out["max_tiny_is_estimate"] = quick
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
