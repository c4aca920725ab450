"""Live migration of an idle tiny instance between the two hosts of `cumulo up --hosts 2`.

Per architecture (x86_64 and arm64; x86_64 only with --quick), N migrations back and forth
(10; 3 with --quick) of a t1.nano instance: QEMU's reported downtime (p50, max) and the total
time (p50) from `migration show`. Throughout, the instance streams a counter every 50 ms over
one TCP connection to a client instance on its private address (the public IP does not follow
a migration until the edge exists, so the client is another instance of the network, not this
machine); the client stamps each line with its own uptime (bash builtins: no fork per line,
10 ms resolution), and `stream_gap_ms_max` is the longest gap between two lines over all the
migrations (50 ms of it is the stream's own period). A counter that skips or restarts (a new
connection) is reported as `stream_broken`.

The full run also migrates the x86_64 guest while it rewrites 64 MiB of memory in a loop (dd
reading /dev/zero into one 64 MiB buffer, again and again), and reports whether it converged
(auto-converge throttles the guest until a pass fits), its passes, dirty rate and downtime.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cloud import CUMULO, BenchCloud, percentile, running_cloud, wait_running
from bench.fdb_follow import FOLLOW_WITHIN_S, FdbWatch

PORT = 5001
PERIOD_MS = 50
N_FULL, N_QUICK = 10, 3
ENDED = ("completed", "failed", "cancelled")


def _name(arch: str) -> str:
    return "m-" + arch.replace("_", "-")  # instance names take no "_"


def _ssh(cloud: BenchCloud, name: str, script: str, timeout: float = 60) -> str:
    out = subprocess.run([*CUMULO, "ssh", name, "--", "sh", "-c", f"'{script}'"],
                         env=cloud.env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"ssh {name}: {out.stderr[-500:]}")
    return out.stdout


def _wait_ssh(cloud: BenchCloud, name: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _ssh(cloud, name, "true", timeout=30)
            return
        except (RuntimeError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _hosts_up(cloud: BenchCloud, n: int, timeout: float = 300) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        hosts = [h for h in cloud.http.get("/v1/hosts").json() if h.get("state") == "up"]
        if len(hosts) >= n:
            return [h["name"] for h in hosts]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(hosts)} of {n} hosts up")
        time.sleep(0.5)


def migrate(cloud: BenchCloud, name: str, timeout: float = 900) -> dict[str, Any]:
    r = cloud.http.post(f"/v1/instances/{name}/migrate", json={})
    if r.status_code != 202:
        raise RuntimeError(f"migrate {name}: {r.status_code} {r.text[:300]}")
    mid = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        mig = dict(cloud.http.get(f"/v1/migrations/{mid}").json())
        if mig["state"] in ENDED:
            return mig
        if time.monotonic() > deadline:
            raise RuntimeError(f"migration {mid} still {mig['state']} after {timeout:g} s")
        time.sleep(0.2)


def stream_gaps(text: str) -> tuple[float, bool]:
    """(the longest gap in ms between two stamped lines, whether the counter ran 0, 1, 2 ...
    without a skip or a restart) of the client's `COUNTER UPTIME` lines."""
    rows = [line.split() for line in text.splitlines()]
    rows = [r for r in rows if len(r) == 2 and r[0].isdigit()]
    counters = [int(r[0]) for r in rows]
    stamps = [float(r[1]) for r in rows]
    gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(stamps)]
    intact = counters == list(range(counters[0], counters[0] + len(counters))) if rows else False
    return float(max(gaps, default=0)), intact


def _stream(cloud: BenchCloud, name: str, ip: str) -> str:
    """Start the guest's counter and the client's stamped reader; the client's file."""
    _ssh(cloud, name, f"(i=0; while :; do echo $i; i=$((i+1)); usleep {PERIOD_MS * 1000}; "
                      f"done | nc -l -p {PORT} >/dev/null 2>&1 &)")
    out = f"/tmp/stream-{name}"
    reader = "while read n; do read up idle < /proc/uptime; echo \\$n \\$up; done"
    _ssh(cloud, "client", f"(sleep 100000 | nc {ip} {PORT} | bash -c \"{reader}\" > {out} "
                          "2>&1 &)")
    deadline = time.monotonic() + 120
    while len(_ssh(cloud, "client", f"cat {out}").splitlines()) < 10:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stream from {name}")
        time.sleep(1)
    return out


def _arch(cloud: BenchCloud, name: str, n: int) -> dict[str, Any]:
    ip = cloud.show(name)["private_ip"]
    out = _stream(cloud, name, ip)
    mac = _ssh(cloud, name, "cat /sys/class/net/eth0/address").strip()
    migs, follows = [], []
    for _ in range(n):
        watch = FdbWatch(cloud, name, mac)
        watch.start()
        migs.append(migrate(cloud, name))
        watch.join(timeout=FOLLOW_WITHIN_S + 5)
        watch.stop.set()
        if migs[-1]["state"] == "completed":
            follows.append(watch.follow_ms)
        time.sleep(1.0)
    gap, intact = stream_gaps(_ssh(cloud, "client", f"cat {out}"))
    done = [m for m in migs if m["state"] == "completed"]
    downtimes = [float(m["downtime_ms"]) for m in done if m["downtime_ms"] is not None]
    totals = [float(m["total_s"]) for m in done if m["total_s"] is not None]
    result: dict[str, Any] = {
        "migrations": n, "completed": len(done),
        "failed_reasons": [m["reason"] for m in migs if m["state"] != "completed"],
        "stream_gap_ms_max": gap, "stream_broken": not intact, "downtimes_ms": downtimes,
        "fdb_follow_ms": follows,
    }
    followed = [float(f) for f in follows if f is not None]
    result["fdb_not_followed"] = len(follows) - len(followed)  # not within FOLLOW_WITHIN_S
    if followed:
        result.update(fdb_follow_ms_p50=percentile(followed, 50),
                      fdb_follow_ms_max=max(followed))
    if downtimes:
        result.update(downtime_ms_p50=percentile(downtimes, 50), downtime_ms_max=max(downtimes))
    if totals:
        result["total_s_p50"] = percentile(totals, 50)
    return result


def _dirtying(cloud: BenchCloud, name: str) -> dict[str, Any]:
    """A migration while the guest rewrites 64 MiB (tmpfs) in a loop."""
    # dd reads /dev/zero into one 64 MiB buffer again and again: 64 MiB of guest RAM
    # rewritten in a loop, as fast as the vCPU goes.
    _ssh(cloud, name, "(dd if=/dev/zero of=/dev/null bs=64M count=1000000000 >/dev/null "
                      "2>&1 &)")
    time.sleep(3)
    _ssh(cloud, name, "pidof dd")  # it runs (not killed for want of memory)
    t0 = time.monotonic()
    mig = migrate(cloud, name, timeout=1200)
    p = mig["progress"]
    return {"state": mig["state"], "reason": mig["reason"], "downtime_ms": mig["downtime_ms"],
            "total_s": mig["total_s"], "wall_s": round(time.monotonic() - t0, 1),
            "passes": p["passes"], "dirty_pages_rate": p["dirty_pages_rate"],
            "ram_bytes_copied": p["ram_bytes_copied"], "ram_bytes_total": p["ram_bytes_total"]}


def _keep_logs(cloud: BenchCloud) -> None:
    """The hosts' logs of a failed start, kept in /tmp/cumulo-bench-migration-logs."""
    keep = Path(tempfile.gettempdir()) / "cumulo-bench-migration-logs"
    shutil.rmtree(keep, ignore_errors=True)
    for log in cloud.state_dir.glob("**/*.log"):
        target = keep / log.relative_to(cloud.state_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)


def run(quick: bool) -> dict[str, Any]:
    n = N_QUICK if quick else N_FULL
    arches = ["x86_64"] if quick else ["x86_64", "arm64"]
    out: dict[str, Any] = {"n": n, "stream": "private address, read by another instance",
                           "load_1m_before": round(os.getloadavg()[0], 1)}
    with running_cloud(hosts=2) as cloud:
        _hosts_up(cloud, 2)
        subprocess.run([*CUMULO, "security-group", "rule-add", "default", "--proto", "tcp",
                        "--port", str(PORT)], env=cloud.env, capture_output=True, check=True)
        names = ["client", *(_name(a) for a in arches)]
        cloud.create("client", "x86_64")
        for arch in arches:
            cloud.create(_name(arch), arch)
        try:
            wait_running(cloud, names, timeout=900)
        except RuntimeError:
            _keep_logs(cloud)
            raise
        for name in names:
            _wait_ssh(cloud, name)
        for arch in arches:
            out[arch] = _arch(cloud, _name(arch), n)
        if not quick:
            out["dirty_memory"] = _dirtying(cloud, _name("x86_64"))
    out["load_1m_after"] = round(os.getloadavg()[0], 1)
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
