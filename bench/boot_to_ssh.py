"""Boot to SSH: from the create call to the first successful SSH login, next to the bare floor.

One `cumulo up` (real agent, QEMU driver, the accelerator `auto` picks, unless
CUMULO_BENCH_ACCEL says otherwise) and one hand-made floor network (bench/floor.py). For each
architecture, runs alternate: a cumulo boot, then a floor boot, N times each (10; 2 with
--quick), so that both see the same machine load. Each cumulo boot: POST /v1/instances
(`tiny`, t1.nano: 1 vCPU, 128 MiB) -> poll `ssh -o BatchMode=yes cumulo@<public loopback IP>
true` every 50 ms until it succeeds -> delete and wait until it is gone. Each floor boot: QEMU
with the same kernel, disk, seed, accelerator and RAM -> the same ssh loop, inside the floor
namespace. Both clocks stop at the first successful `ssh ... true`.

Besides p50/p95 it records where the time goes (seconds from the create call): `qemu_start`
(the QEMU process exists: API + agent pass + overlay + seed + network), `initramfs`,
`rootfs`, `guest_ready` (console lines of the guest; ready = after its DHCP lease), `ssh`;
and the median per-run gap from `guest_ready` to `ssh` (cumulo's and the floor's).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.cloud import (
    BenchCloud,
    LineWatch,
    percentile,
    process_start_monotonic,
    running_cloud,
    wait_ssh,
)
from bench.floor import MARKERS, _marker_key, _watching, floor_network

ARCHES = ("x86_64", "arm64")
RAM_MIB = 128  # t1.nano; x86_64 with this kernel does not boot in 64 MiB


def runs(quick: bool) -> int:
    """Boots per architecture. --quick: 2 (was 3; the 6-minute budget, docs/benchmarks.md):
    its p50 (nearest rank) is the faster of two boots and its p95 the slower."""
    return 2 if quick else 10


def cumulo_boot(cloud: BenchCloud, name: str, arch: str, timeout: float = 180
                ) -> dict[str, float]:
    """One create -> SSH; seconds from the create call to each milestone."""
    assert cloud.key_file is not None
    t0 = time.monotonic()
    inst = cloud.create(name, arch)
    t_created = time.monotonic()
    vm_id = inst["id"]
    public_ip = inst.get("public_ip") or cloud.show(name).get("public_ip")
    watch = LineWatch(cloud.console_log(vm_id), MARKERS)
    qemu: dict[str, float] = {}

    def find_qemu() -> None:
        if "start" not in qemu:
            pid = cloud.qemu_pid(vm_id)
            if pid is not None:
                qemu["start"] = process_start_monotonic(pid)

    try:
        with _watching(watch, extra=find_qemu):
            while not public_ip:  # allocated with the instance; asked again just in case
                time.sleep(0.05)
                public_ip = cloud.show(name).get("public_ip")
            t_ssh = wait_ssh(cloud.key_file, f"cumulo@{public_ip}", timeout)
    finally:
        cloud.delete(name)
        cloud.wait_gone([name])
    out = {"create_call_s": t_created - t0, "ssh_s": t_ssh - t0}
    if "start" in qemu:
        out["qemu_start_s"] = qemu["start"] - t0
    for m, t in watch.seen.items():
        out[_marker_key(m)] = t - t0
    return out


def summarize(cumulo: list[dict[str, float]], floor: list[dict[str, float]]) -> dict[str, Any]:
    """p50/p95 of the boots, the floor's p50, and the median of each milestone (pure)."""
    ssh = [r["ssh_s"] for r in cumulo]
    fl = [r["ssh_s"] for r in floor]
    res: dict[str, Any] = {
        "p50_s": round(percentile(ssh, 50), 2),
        "p95_s": round(percentile(ssh, 95), 2),
        "floor_p50_s": round(percentile(fl, 50), 2),
        "floor_p95_s": round(percentile(fl, 95), 2),
        "ratio_p50": round(percentile(ssh, 50) / percentile(fl, 50), 3),
        "runs": len(ssh),
        "all_s": [round(x, 2) for x in ssh],
        "floor_all_s": [round(x, 2) for x in fl],
    }
    res["breakdown_median_s"] = _medians(cumulo)
    res["floor_breakdown_median_s"] = _medians(floor)
    # From the guest's "ready" line (after its DHCP lease) to the first SSH login, per run:
    # what the path to the guest adds (the forwarder, for cumulo), and less sensitive to
    # the machine's load than the boots themselves.
    res["ready_to_ssh_median_s"] = _ready_to_ssh(cumulo)
    res["floor_ready_to_ssh_median_s"] = _ready_to_ssh(floor)
    return res


def _ready_to_ssh(rows: list[dict[str, float]]) -> float | None:
    gaps = [r["ssh_s"] - r["guest_ready_s"] for r in rows if "guest_ready_s" in r]
    return round(median(gaps), 2) if gaps else None


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k.removesuffix("_s"): round(median([r[k] for r in rows if k in r]), 2)
            for k in keys}


def run(quick: bool) -> dict[str, Any]:
    n = runs(quick)
    out: dict[str, Any] = {}
    with running_cloud() as cloud, \
            tempfile.TemporaryDirectory(prefix="cmbf-", dir="/tmp") as tmp, \
            floor_network(Path(tmp)) as fl:
        accel = cloud.accel()
        out["accelerator"] = accel
        for arch in ARCHES:
            cu: list[dict[str, float]] = []
            fr: list[dict[str, float]] = []
            for i in range(n):
                cu.append(cumulo_boot(cloud, f"boot-{arch.replace('_', '')}-{i}", arch))
                fr.append(fl.boot(arch, accel if arch == "x86_64" else "tcg", RAM_MIB))
            out[arch] = summarize(cu, fr)
    out["ram_mib"] = RAM_MIB
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
