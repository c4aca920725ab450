"""The benchmark runner: machine facts, the sections, JSON out, the table in docs/benchmarks.md.

Each section is a module `bench.<name>` with `run(quick: bool) -> dict`; the runner merges
their results under the section's name. A section whose module does not exist yet is simply
absent from the JSON, and the table says "not measured".
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
DEFAULT_DOC = REPO / "docs" / "benchmarks.md"
SECTIONS = ("boot_to_ssh", "control_plane", "footprint", "idle", "tcg_memory", "migration")
OPTIONAL = ("many_hosts",)  # only with --only: not part of a default (or --quick) run
BEGIN = "<!-- bench:results:begin (written by `cumulo bench`; edit outside these markers) -->"
END = "<!-- bench:results:end -->"

Section = Callable[[bool], dict[str, Any]]


def load_section(name: str) -> Section | None:
    """The section's `run`, or None when the module is not written yet."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"bench.{name}":
            return None
        raise
    run: Section = module.run
    return run


def _cmd(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _debian() -> str:
    with contextlib.suppress(OSError):
        return Path("/etc/debian_version").read_text().strip()
    return ""


def _qemu() -> str:
    first = _cmd("qemu-system-x86_64", "--version").splitlines()
    m = re.search(r"version (\S+)", first[0]) if first else None
    return m.group(1) if m else ""


def _accelerator() -> str:
    """What `auto` would pick for x86_64 guests here (kvm only if a guest really runs)."""
    if os.environ.get("CUMULO_BENCH_ACCEL"):
        return os.environ["CUMULO_BENCH_ACCEL"]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    return "kvm?"  # /dev/kvm opens; the boot sections record what they actually used


def machine_facts() -> dict[str, Any]:
    from cumulo import __version__

    commit = _cmd("git", "rev-parse", "--short", "HEAD")
    dirty = bool(_cmd("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": _ram_gib(),
        "kernel": platform.release(),
        "debian": _debian(),
        "python": platform.python_version(),
        "qemu": _qemu(),
        "cumulo": __version__,
        "commit": commit + ("+dirty" if commit and dirty else ""),
        "accelerator": _accelerator(),
    }


def run_all(quick: bool, only: list[str] | None = None,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    names = only or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS + OPTIONAL]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)} "
                         f"(known: {', '.join(SECTIONS + OPTIONAL)})")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "machine": machine_facts(),
    }
    for name in names:
        run = load_section(name)
        if run is None:
            log(f"{name}: not implemented yet, skipped")
            continue
        log(f"{name}: running{' (quick)' if quick else ''}")
        t = time.monotonic()
        result[name] = run(quick)
        log(f"{name}: done in {time.monotonic() - t:.0f} s")
    used = _accelerator_used(result)
    if used:
        result["machine"]["accelerator"] = used
    return result


def _accelerator_used(result: dict[str, Any]) -> str:
    """What the VM sections really ran x86_64 guests with (as the agent reported it)."""
    for name in ("boot_to_ssh", "idle"):
        section = result.get(name)
        if isinstance(section, dict) and section.get("accelerator"):
            return str(section["accelerator"])
    return ""


# --- the table ---------------------------------------------------------------------------

# (section, path in the section, label, unit, promise: (op, bound) or None)
ROWS: list[tuple[str, str, str, str, tuple[str, float] | None]] = [
    ("boot_to_ssh", "x86_64.p50_s", "boot to SSH, x86_64, p50", "s", None),
    ("boot_to_ssh", "x86_64.p95_s", "boot to SSH, x86_64, p95", "s", None),
    ("boot_to_ssh", "x86_64.floor_p50_s", "bare QEMU floor, x86_64, p50", "s", None),
    ("boot_to_ssh", "x86_64.ratio_p50", "boot to SSH / floor, x86_64, p50", "x", ("<=", 1.15)),
    ("boot_to_ssh", "arm64.p50_s", "boot to SSH, arm64, p50", "s", None),
    ("boot_to_ssh", "arm64.p95_s", "boot to SSH, arm64, p95", "s", None),
    ("boot_to_ssh", "arm64.floor_p50_s", "bare QEMU floor, arm64, p50", "s", None),
    ("boot_to_ssh", "arm64.ratio_p50", "boot to SSH / floor, arm64, p50", "x", ("<=", 1.15)),
    ("control_plane", "sqlite.create_per_s", "creates to running, SQLite", "instances/s",
     (">=", 200)),
    ("control_plane", "sqlite.p50_ms", "create call p50, SQLite, closed loop", "ms", None),
    ("control_plane", "sqlite.p99_ms", "create call p99, SQLite, closed loop", "ms", None),
    ("control_plane", "sqlite.delete_per_s", "deletes to gone, SQLite", "instances/s", None),
    ("control_plane", "postgresql.create_per_s", "creates to running, PostgreSQL",
     "instances/s", None),
    ("control_plane", "postgresql.p50_ms", "create call p50, PostgreSQL, closed loop", "ms",
     None),
    ("control_plane", "postgresql.p99_ms", "create call p99, PostgreSQL, closed loop", "ms",
     None),
    ("control_plane", "postgresql.delete_per_s", "deletes to gone, PostgreSQL", "instances/s",
     None),
    ("footprint", "qemu_overhead_mib", "QEMU overhead per VM", "MiB", ("<=", 48)),
    ("footprint", "agent_mib_per_vm", "agent memory per VM", "MiB", None),
    ("footprint", "max_tiny_instances", "tiny instances that fit", "", None),
    ("idle", "cpu_percent", "idle CPU (API + agent)", "%", ("<", 2)),
    *((("migration", f"{arch}.{key}", f"migration {arch}: {label}", unit, promise)
       for arch in ("x86_64", "arm64")
       for key, label, unit, promise in (
           ("downtime_ms_p50", "QEMU downtime p50", "ms", ("<=", 100)),
           ("downtime_ms_max", "QEMU downtime max", "ms", None),
           ("total_s_p50", "total time p50", "s", None),
           ("stream_gap_ms_max", "longest gap in a streamed counter", "ms", None),
           ("fdb_follow_ms_max", "VXLAN entries follow the move, max", "ms", ("<=", 1000))))),
]


def _get(result: dict[str, Any], section: str, path: str) -> Any:
    node: Any = result.get(section)
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _verdict(value: Any, promise: tuple[str, float] | None) -> str:
    if promise is None:
        return ""
    op, bound = promise
    text = f"{op} {bound:g}"
    if not isinstance(value, int | float):
        return text
    ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    return f"{text}: {'met' if ok else 'MISSED'}"


def render_table(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [
        f"Measured {result.get('date', '?')}{' with --quick' if result.get('quick') else ''} "
        f"on {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('ram_gib', '?')} GiB RAM; Linux {m.get('kernel', '?')}, "
        f"Debian {m.get('debian', '?')}, Python {m.get('python', '?')}, "
        f"QEMU {m.get('qemu', '?')}, cumulo {m.get('cumulo', '?')} ({m.get('commit', '?')}), "
        f"accelerator {m.get('accelerator', '?')}.",
        "",
        "| measure | value | promise |",
        "|---|---|---|",
    ]
    for section, path, label, unit, promise in ROWS:
        value = _get(result, section, path)
        shown = "not measured" if value is None else f"{value:g} {unit}".strip() \
            if isinstance(value, int | float) else str(value)
        lines.append(f"| {label} | {shown} | {_verdict(value, promise)} |")
    cp = result.get("control_plane")
    if isinstance(cp, dict):
        for db in ("sqlite", "postgresql"):
            r = cp.get(db)
            if isinstance(r, dict):
                lines.append("")
                lines.append(
                    f"Control plane on {db}: {r.get('instances')} instances, {r.get('hosts')} "
                    f"hosts, {r.get('clients')} clients, {r.get('projects')} project; "
                    f"{r.get('create_errors')} failed creates; API CPU while creating "
                    f"{r.get('api_cpu_percent_create')} % of one core."
                )
    lines += _open_loop_table(result)
    lines += _vm_notes(result)
    return "\n".join(lines)


# The open-loop promise: (database, fraction of saturation, key, op, bound).
OPEN_LOOP_PROMISE = ("sqlite", 0.5, "p99_ms", "<=", 50.0)


def _open_loop_table(result: dict[str, Any]) -> list[str]:
    """Latency at fixed offered rates, per database (the create call, from its scheduled
    start; running: from the scheduled start until the agent reported it running)."""
    cp = result.get("control_plane")
    if not isinstance(cp, dict):
        return []
    rows = []
    for db in ("sqlite", "postgresql"):
        r = cp.get(db)
        for ph in (r.get("open_loop") or []) if isinstance(r, dict) else []:
            db_p, frac_p, key, op, bound = OPEN_LOOP_PROMISE
            promise = _verdict(ph.get(key), (op, bound)) \
                if (db, ph.get("fraction_of_saturation")) == (db_p, frac_p) else ""
            rows.append(
                f"| {db} | {ph.get('offered_per_s')} ({ph.get('fraction_of_saturation', 0):.0%})"
                f" | {ph.get('requests')} | {ph.get('p50_ms')} | {ph.get('p99_ms')} | "
                f"{ph.get('p999_ms')} | {ph.get('running_p50_ms')} | {ph.get('running_p99_ms')}"
                f" | {ph.get('errors')} | {promise} |")
    if not rows:
        return []
    return ["", "Open loop (creates on a fixed schedule; ms from each one's scheduled start):",
            "", "| database | offered/s (of saturation) | creates | p50 | p99 | p99.9 | "
            "running p50 | running p99 | errors | promise |", "|---|---|---|---|---|---|---|---|"
            "---|---|", *rows]


def _vm_notes(result: dict[str, Any]) -> list[str]:
    """One line per VM section: what was run, and where the boot time goes."""
    out: list[str] = []
    boot = result.get("boot_to_ssh")
    if isinstance(boot, dict):
        for arch in ("x86_64", "arm64"):
            r = boot.get(arch)
            if not isinstance(r, dict):
                continue
            b, f = r.get("breakdown_median_s", {}), r.get("floor_breakdown_median_s", {})
            steps = ", ".join(f"{k} {v:g}" for k, v in b.items())
            fsteps = ", ".join(f"{k} {v:g}" for k, v in f.items())
            out += ["", f"Boot to SSH, {arch}: {r.get('runs')} runs each (accelerator "
                        f"{boot.get('accelerator')}, {boot.get('ram_mib')} MiB); median "
                        f"seconds from the create call: {steps}; floor, from QEMU's "
                        f"launch: {fsteps}."]
    fp = result.get("footprint")
    if isinstance(fp, dict):
        how = (f"estimated from {fp.get('instances_booted')} VMs: "
               f"{fp.get('max_tiny_estimated')}" if fp.get("max_tiny_is_estimate") else
               f"measured by a ramp that stopped at {fp.get('instances_booted')} VMs: "
               f"{fp.get('stopped_because')}")
        out += ["", f"Footprint: {fp.get('arch')} tiny, {fp.get('ram_mib')} MiB, "
                    f"`-accel {fp.get('accel', 'tcg')}`; QEMU RSS "
                    f"{fp.get('rss_mib')} MiB of which guest-resident "
                    f"{fp.get('guest_resident_mib')} MiB; tiny instances that fit {how}."]
    out += _tcg_notes(result)
    out += _migration_notes(result)
    idle = result.get("idle")
    if isinstance(idle, dict):
        out += ["", f"Idle: {idle.get('vms')} running {idle.get('arch')} VMs, "
                    f"{idle.get('window_s')} s window: API {idle.get('api_cpu_percent')} %, "
                    f"agent {idle.get('agent_cpu_percent')} %, dnsmasq "
                    f"{idle.get('dnsmasq_cpu_percent')} %; the guests themselves (QEMU) "
                    f"{idle.get('qemu_cpu_percent_total')} % in total."]
    return out


def _tcg_notes(result: dict[str, Any]) -> list[str]:
    """The translation-cache sizes side by side (bench/tcg_memory.py)."""
    tm = result.get("tcg_memory")
    if not isinstance(tm, dict) or not isinstance(tm.get("sizes"), dict):
        return []
    rows = [f"| {v.get('accel')} | {v.get('boot_p50_s')} s | {v.get('boot_vs_default')} x | "
            f"{v.get('overhead_mib')} MiB | {v.get('rss_mib')} MiB |"
            for v in tm["sizes"].values()]
    return ["", f"TCG translation cache ({tm.get('arch')} tiny, {tm.get('ram_mib')} MiB, one "
                f"cloud per size, {tm.get('rounds')} boots each, interleaved): recommended "
                f"tb-size {tm.get('recommended_tb_size_mib')} MiB; cumulo uses "
                f"`{tm.get('accel')}`.",
            "", "| -accel | boot to SSH p50 | vs default | QEMU overhead | RSS |",
            "|---|---|---|---|---|", *rows]


def rewrite_doc(doc: Path, result: dict[str, Any]) -> None:
    """Replace what is between the markers; keep everything else of the document."""
    table = render_table(result)
    text = doc.read_text() if doc.exists() else ""
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = (text.rstrip() + "\n\n## Results\n\n" if text else "# Benchmarks\n\n") + block + "\n"
    doc.write_text(text)


def main(quick: bool, out: Path | None = None, only: list[str] | None = None,
         doc: Path | None = DEFAULT_DOC) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(f"cumulo bench: {msg}", file=sys.stderr, flush=True)

    result = run_all(quick, only, log)
    target = out or DEFAULT_OUT
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results in {target}")
    if doc is not None:
        rewrite_doc(doc, result)
        log(f"table in {doc}")
    return result


def _migration_notes(result: dict[str, Any]) -> list[str]:
    mig = result.get("migration")
    if not isinstance(mig, dict):
        return []
    out = ["", f"Migration: {mig.get('n')} migrations per architecture of an idle t1.nano "
               f"instance between the two hosts of `cumulo up --hosts 2`; the stream: "
               f"{mig.get('stream')} (load average {mig.get('load_1m_before')} before, "
               f"{mig.get('load_1m_after')} after)."]
    for arch in ("x86_64", "arm64"):
        r = mig.get(arch)
        if isinstance(r, dict):
            broken = r.get("stream_broken")
            failed = "; ".join(r.get("failed_reasons") or [])
            out.append(f"{arch}: {r.get('completed')} of {r.get('migrations')} completed, "
                       f"downtimes {r.get('downtimes_ms')} ms, counter "
                       f"{'BROKEN (skipped or restarted)' if broken else 'intact'}"
                       f"{'; failed: ' + failed if failed else ''}.")
    hot = mig.get("dirty_memory")
    if isinstance(hot, dict):
        why = f": {hot['reason']}" if hot.get("reason") else ""
        out.append(f"A guest rewriting 64 MiB in a loop: {hot.get('state')} after "
                   f"{hot.get('wall_s')} s ({hot.get('passes')} passes, dirty rate "
                   f"{hot.get('dirty_pages_rate')} pages/s at the end, downtime "
                   f"{hot.get('downtime_ms')} ms){why}.")
    return out
