"""One cgroup v2 per VM: `<cgroup2 mount>/cumulo/<vm id>.<host scope>`, QEMU in it from exec.

Limits: `cpu.max` = the VM's vCPUs in whole CPUs, `memory.max` = its RAM plus headroom for
QEMU itself (device models, the TCG translation cache: about 120 MiB for a 128 MiB guest here)
with `memory.swap.max` 0 (a guest beyond its limit is OOM-killed, never swapped out to hurt
the host), `pids.max` (QEMU's threads: vCPUs, I/O workers). Volume I/O is capped by QEMU's
throttle groups per volume (io.max cannot tell two volume files on one disk apart).

A machine may not give cgroup v2 those controllers (a hybrid v1/v2 host binds cpu, memory and
pids to v1; a container may mount cgroup2 read-only): then the VM still gets its cgroup when it
can (its processes are grouped), the limits it cannot have are skipped, and the agent says so
once, as a warning, instead of refusing to run VMs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import structlog

log = structlog.get_logger("cumulo.agent")

WANTED = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000
PIDS_BASE = 256  # QEMU's main loop, RCU, up to 64 thread-pool workers, ...


def headroom_mib(ram_mib: int) -> int:
    """What QEMU needs beyond guest RAM: device models, the TCG code cache, page tables."""
    return 256 + ram_mib // 8


def limits(vcpus: int, ram_mib: int) -> dict[str, str]:
    """The cgroup files of a VM and their content (pure)."""
    return {
        "cpu.max": f"{vcpus * CPU_PERIOD_US} {CPU_PERIOD_US}",
        "memory.max": str((ram_mib + headroom_mib(ram_mib)) * 1024 * 1024),
        "memory.swap.max": "0",
        "pids.max": str(PIDS_BASE + 4 * vcpus),
    }


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] == "cgroup2":
            return Path(pre.split()[4])
    return None


class VmCgroups:
    """Creates, limits and removes the per-VM cgroups of one driver."""

    def __init__(self, root: Path | None = None, parent: str = "cumulo", scope: str = "") -> None:
        self.mount = root if root is not None else cgroup2_mount()
        self.parent = parent
        self.scope = scope  # tells apart the hosts of one machine (VM ids are unique anyway)
        self._warned: set[str] = set()

    @classmethod
    def for_runtime(cls, runtime_dir: Path) -> VmCgroups:
        """The cgroups of the VMs of one host (its runtime dir): `cumulo/<vm id>.<10 hex>`."""
        return cls(scope=hashlib.sha256(os.fsencode(runtime_dir)).hexdigest()[:10])

    def path(self, vm_id: str) -> Path | None:
        name = f"{vm_id}.{self.scope}" if self.scope else vm_id
        return None if self.mount is None else self.mount / self.parent / name

    def prepare(self, vm_id: str, vcpus: int, ram_mib: int) -> Path | None:
        """The VM's cgroup, made and limited as far as this machine allows (None: no cgroup)."""
        path = self.path(vm_id)
        if path is None or self.mount is None:
            self._warn("nomount", "no cgroup v2 hierarchy is mounted: VMs run without cgroups")
            return None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._warn("mkdir", f"cannot create cgroups under {path.parent}: {e}; VMs run"
                       " without cgroups")
            return None
        missing = self._enable(path.parent)
        if missing:
            self._warn("controllers", f"cgroup v2 at {self.mount} lacks the controllers"
                       f" {', '.join(missing)} (bound to cgroup v1, or not delegated): VMs"
                       " get their cgroup but not those limits")
        for name, value in limits(vcpus, ram_mib).items():
            if (path / name).exists():
                try:
                    (path / name).write_text(value)
                except OSError as e:
                    self._warn(name, f"cannot set {name} of VM cgroups: {e}")
        return path

    def remove(self, vm_id: str) -> None:
        path = self.path(vm_id)
        if path is not None:
            with contextlib.suppress(OSError):  # gone already, or the process still exiting
                path.rmdir()

    def _enable(self, parent: Path) -> list[str]:
        """Turn the wanted controllers on for the VMs' cgroups (in the root's and the parent's
        subtree_control); the wanted ones this hierarchy does not have."""
        assert self.mount is not None
        available: set[str] = set()
        for level in (self.mount, parent):
            try:
                available = set((level / "cgroup.controllers").read_text().split())
                enabled = set((level / "cgroup.subtree_control").read_text().split())
            except OSError:
                return list(WANTED)
            want = [c for c in WANTED if c in available and c not in enabled]
            if want:
                with contextlib.suppress(OSError):
                    (level / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in want))
        return [c for c in WANTED if c not in available]

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("vm_cgroups", detail=message)


def pid_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of a process ("/cumulo/i-..."), or None."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None
