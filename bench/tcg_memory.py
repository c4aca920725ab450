"""QEMU's memory per VM under TCG against boot time, for several translation-cache sizes.

QEMU 7.2 gives a TCG guest a 1 GiB translation cache (`-accel tcg`, mapped lazily); a booted
64 MiB arm64 tiny guest keeps ~70 MiB of it resident, more than the guest itself. A smaller
`-accel tcg,tb-size=N` caps that, at the price of flushing and retranslating guest code more
often. This section boots the footprint's guest (arm64 `tiny`, 1 vCPU, 64 MiB) on the bare
floor (bench/floor.py: the same kernel, disk, seed and DHCP path, QEMU started by hand) once
per size per round, the sizes in a rotated order each round so that all of them see the same
machine load, side by side. Per boot: seconds from QEMU's launch to the first SSH login, and,
2 s after that login, QEMU's RSS and the resident part of its guest-RAM mapping
(`overhead_mib` = RSS - guest-resident: what QEMU costs beyond the guest's RAM).

`recommended_tb_size_mib`: the size with the smallest overhead whose boot p50 is within 5 %
of QEMU's default (tb-size 0) in the same run; `configured_tb_size_mib` is what cumulo uses
(cumulo.domain.tcg.DEFAULT_TB_SIZE_MIB).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from bench.cloud import percentile
from bench.floor import floor_network
from bench.footprint import qemu_memory
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB, accel_option

ARCH = "arm64"
RAM_MIB = 64
SETTLE_S = 2.0
SLOWER_AT_MOST = 1.05  # boot p50 against QEMU's default cache, same run


def sizes(quick: bool) -> tuple[int, ...]:
    return (0, 32, 16) if quick else (0, 64, 32, 16, 8)


def rounds(quick: bool) -> int:
    return 2 if quick else 5


def order(values: tuple[int, ...], round_no: int) -> list[int]:
    """The sizes rotated by the round number: each size takes each position in turn (pure)."""
    k = round_no % len(values)
    return list(values[k:] + values[:k])


def summarize(boots: dict[int, list[dict[str, float]]]) -> dict[str, Any]:
    """Per size: boot p50 / all, memory means; and the recommendation (pure)."""
    per: dict[str, Any] = {}
    for size, rows in boots.items():
        ssh = [r["ssh_s"] for r in rows]
        per[str(size)] = {
            "accel": accel_option("tcg", size),
            "boot_p50_s": round(percentile(ssh, 50), 2),
            "boot_all_s": [round(x, 2) for x in ssh],
            "overhead_mib": round(mean(r["overhead_mib"] for r in rows), 1),
            "rss_mib": round(mean(r["rss_mib"] for r in rows), 1),
            "guest_resident_mib": round(mean(r["guest_resident_mib"] for r in rows), 1),
        }
    base = per["0"]["boot_p50_s"]
    for v in per.values():
        v["boot_vs_default"] = round(v["boot_p50_s"] / base, 3) if base else None
    ok = [int(k) for k, v in per.items()
          if v["boot_vs_default"] is not None and v["boot_vs_default"] <= SLOWER_AT_MOST]
    best = min(ok, key=lambda k: per[str(k)]["overhead_mib"]) if ok else 0
    return {"sizes": per, "recommended_tb_size_mib": best}


def run(quick: bool, values: tuple[int, ...] = (), n_rounds: int = 0) -> dict[str, Any]:
    values = values or sizes(quick)
    if 0 not in values:  # QEMU's default is the baseline of the comparison
        values = (0, *values)
    n_rounds = n_rounds or rounds(quick)
    boots: dict[int, list[dict[str, float]]] = {v: [] for v in values}
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cmbt-", dir="/tmp") as tmp, \
            floor_network(Path(tmp)) as fl:
        for r in range(n_rounds):
            for size in order(values, r):
                mem: dict[str, float] = {}

                def measure(pid: int, into: dict[str, float] = mem) -> None:
                    time.sleep(SETTLE_S)
                    into.update(qemu_memory(pid, RAM_MIB))

                row = fl.boot(ARCH, accel_option("tcg", size), RAM_MIB, at_ssh=measure)
                boots[size].append({**row, **mem})
    out = summarize(boots)
    out.update({
        "arch": ARCH, "ram_mib": RAM_MIB, "rounds": n_rounds,
        "accelerator": "tcg",  # arm64 guests on this x86_64 host
        "configured_tb_size_mib": DEFAULT_TB_SIZE_MIB,
        "accel": accel_option("tcg", DEFAULT_TB_SIZE_MIB),
        "seconds": round(time.monotonic() - t, 1),
    })
    return out


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.tcg_memory")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", type=lambda t: tuple(int(x) for x in t.split(",")), default=())
    p.add_argument("--rounds", type=int, default=0)
    a = p.parse_args()
    print(json.dumps(run(a.quick, a.sizes, a.rounds), indent=2))
