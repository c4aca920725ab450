"""The cgroup v1 side of a VM's limits, for hybrid hosts (see qemu_cgroup).

A kernel binds each controller to one hierarchy: on a hybrid host cpu, memory and pids are
mounted as cgroup v1 (`/sys/fs/cgroup/memory`, ...) and so are absent from cgroup v2. For
each wanted controller mounted there, a VM gets one more directory, `<v1 mount>/cumulo/<name>`,
with the v1 files of the same limits. Pure functions: the sizes of a VM's limits (both
versions use them), which cgroup mounts a mountinfo names, and which files a controller's v1
directory gets.
"""

from __future__ import annotations

from pathlib import Path

CPU_PERIOD_US = 100_000
PIDS_BASE = 256  # QEMU's main loop, RCU, up to 64 thread-pool workers, ...


def headroom_mib(ram_mib: int) -> int:
    """What QEMU needs beyond guest RAM: device models, the TCG code cache, page tables."""
    return 256 + ram_mib // 8


def memory_bytes(ram_mib: int) -> int:
    """A VM's memory limit: its RAM plus QEMU's headroom."""
    return (ram_mib + headroom_mib(ram_mib)) * 1024 * 1024


def pids_max(vcpus: int) -> int:
    return PIDS_BASE + 4 * vcpus


def cgroup_mounts(mountinfo: Path) -> list[tuple[Path, str, list[str]]]:
    """(mount point, fstype, super options) of each cgroup or cgroup2 mount in `mountinfo`
    (its format: proc(5); the fields after " - " are fstype, source, super options)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields, pre_fields = post.split(), pre.split()
        if len(fields) >= 3 and len(pre_fields) >= 5 and fields[0] in ("cgroup", "cgroup2"):
            out.append((Path(pre_fields[4]), fields[0], fields[2].split(",")))
    return out


def v1_mounts(wanted: tuple[str, ...], mountinfo: Path) -> dict[str, Path]:
    """Where each wanted controller's cgroup v1 hierarchy is mounted (co-mounted controllers,
    as `cpu,cpuacct`, share one path); the first mount of each wins, as the kernel's mounts
    of one hierarchy are all the same tree."""
    out: dict[str, Path] = {}
    for point, fstype, options in cgroup_mounts(mountinfo):
        if fstype == "cgroup":
            for controller in wanted:
                if controller in options:
                    out.setdefault(controller, point)
    return out


def v1_limits(controller: str, vcpus: int, ram_mib: int) -> dict[str, str]:
    """The v1 files of `controller` for a VM and their content, in the order they must be
    written (memsw, RAM + swap, may never be below the RAM limit: RAM first). Equal limits
    mean no swap, as `memory.swap.max` 0 on v2."""
    memory = str(memory_bytes(ram_mib))
    return {
        "cpu": {"cpu.cfs_period_us": str(CPU_PERIOD_US),
                "cpu.cfs_quota_us": str(vcpus * CPU_PERIOD_US)},
        "memory": {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory},
        "pids": {"pids.max": str(pids_max(vcpus))},
    }.get(controller, {})
