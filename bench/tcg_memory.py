"""QEMU's memory per VM under TCG against boot time, for several translation-cache sizes.

QEMU 7.2 gives a TCG guest a 1 GiB translation cache (`-accel tcg`, mapped lazily); a booted
64 MiB arm64 tiny guest keeps ~70 MiB of it resident, more than the guest itself. A smaller
`-accel tcg,tb-size=N` caps that, at the price of flushing and retranslating guest code more
often. This section runs one `cumulo up` per size at once (each with its own
`[host] tcg_tb_size_mib`, state dir, port and public loopback pool) and boots the footprint's
guest (arm64 `tiny`, 1 vCPU, 64 MiB) once per size per round, the sizes in a rotated order
each round so that all of them see the same machine load, side by side. Per boot: seconds from
the create call to the first SSH login, and, 2 s after that login, QEMU's RSS and the resident
part of its guest-RAM mapping (`overhead_mib` = RSS - guest-resident: what QEMU costs beyond
the guest's RAM); then the instance is deleted.

`recommended_tb_size_mib`: the size with the smallest overhead whose boot p50 is within 5 %
of QEMU's default (tb-size 0) in the same run; `configured_tb_size_mib` is what cumulo uses
(cumulo.domain.tcg.DEFAULT_TB_SIZE_MIB).
"""

from __future__ import annotations

import contextlib
import time
from statistics import mean
from typing import Any

from bench.cloud import BenchCloud, percentile, running_cloud, wait_ssh
from bench.footprint import qemu_memory
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB, accel_option

ARCH = "arm64"
RAM_MIB = 64
SETTLE_S = 2.0
SLOWER_AT_MOST = 1.05  # boot p50 against QEMU's default cache, same run


def sizes(quick: bool) -> tuple[int, ...]:
    """QEMU's default (0) and cumulo's (--quick); the full sweep otherwise."""
    return (0, DEFAULT_TB_SIZE_MIB or 32) if quick else (0, 64, 32, 16, 8)


def rounds(quick: bool) -> int:
    """Boots per size. --quick: 1 (was 2; the 6-minute budget): `boot_vs_default` compares
    one boot with one, which a loaded machine can move by 2x; the memory figures hold."""
    return 1 if quick else 5


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


def boot_once(cloud: BenchCloud, name: str, timeout: float = 300) -> dict[str, float]:
    """Create -> first SSH login (seconds from the create call), then QEMU's memory."""
    assert cloud.key_file is not None
    t0 = time.monotonic()
    inst = cloud.create(name, ARCH, ram_mib=RAM_MIB)
    try:
        ip = inst.get("public_ip") or cloud.show(name).get("public_ip")
        t_ssh = wait_ssh(cloud.key_file, f"cumulo@{ip}", timeout)
        pid = cloud.qemu_pid(inst["id"])
        if pid is None:
            raise RuntimeError(f"no QEMU process for {name}")
        time.sleep(SETTLE_S)
        return {"ssh_s": t_ssh - t0, **qemu_memory(pid, RAM_MIB)}
    finally:
        cloud.delete(name)
        cloud.wait_gone([name])


def run(quick: bool, values: tuple[int, ...] = (), n_rounds: int = 0) -> dict[str, Any]:
    values = values or sizes(quick)
    if 0 not in values:  # QEMU's default is the baseline of the comparison
        values = (0, *values)
    n_rounds = n_rounds or rounds(quick)
    boots: dict[int, list[dict[str, float]]] = {v: [] for v in values}
    t = time.monotonic()
    with contextlib.ExitStack() as stack:
        clouds = {v: stack.enter_context(running_cloud(tb_size_mib=v)) for v in values}
        for r in range(n_rounds):
            for size in order(values, r):
                boots[size].append(boot_once(clouds[size], f"tb{size}-{r}"))
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
