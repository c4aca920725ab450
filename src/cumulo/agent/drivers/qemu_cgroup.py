"""A VM's cgroups: `<cgroup2 mount>/cumulo/<vm id>.<host scope>`, QEMU in them from exec.

Limits: `cpu.max` = the VM's vCPUs in whole CPUs, `memory.max` = its RAM plus headroom for
QEMU itself (device models, the TCG translation cache: about 120 MiB for a 128 MiB guest here)
with `memory.swap.max` 0 (a guest beyond its limit is OOM-killed, never swapped out to hurt
the host), `pids.max` (QEMU's threads: vCPUs, I/O workers). Volume I/O is capped by QEMU's
throttle groups per volume (io.max cannot tell two volume files on one disk apart).

Where the machine puts them:
- cgroup v2 only: one cgroup v2 per VM holds all its limits.
- hybrid (cpu, memory, pids bound to cgroup v1 hierarchies, as /sys/fs/cgroup/memory): the
  cgroup v2 one groups the VM's processes, and each such controller's v1 hierarchy gets a
  directory of the same name, `<v1 mount>/cumulo/<vm id>.<scope>`, with the v1 files of the
  limit (cpu.cfs_quota_us, memory.limit_in_bytes = memory.memsw.limit_in_bytes, pids.max;
  see qemu_cgroup_v1). QEMU joins every one of them before its first instruction.
- neither (a container that mounts cgroups read-only, no hierarchy at all): the VM gets what
  can be made, the limits it cannot have are skipped, and the agent says so once, as a
  warning, instead of refusing to run VMs.
Every directory follows from the VM id and the machine's mounts: a restarted agent removes
them without remembering anything.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from cumulo.agent.drivers.qemu_cgroup_v1 import (
    CPU_PERIOD_US,
    cgroup_mounts,
    memory_bytes,
    pids_max,
    v1_limits,
    v1_mounts,
)

log = structlog.get_logger("cumulo.agent")

WANTED = ("cpu", "memory", "pids")
MOUNTINFO = Path("/proc/self/mountinfo")


def limits(vcpus: int, ram_mib: int) -> dict[str, str]:
    """The cgroup v2 files of a VM and their content (pure)."""
    return {
        "cpu.max": f"{vcpus * CPU_PERIOD_US} {CPU_PERIOD_US}",
        "memory.max": str(memory_bytes(ram_mib)),
        "memory.swap.max": "0",
        "pids.max": str(pids_max(vcpus)),
    }


def cgroup2_mount(mountinfo: Path = MOUNTINFO) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    return next((p for p, fstype, _ in cgroup_mounts(mountinfo) if fstype == "cgroup2"), None)


class VmCgroups:
    """Creates, limits and removes the per-VM cgroups of one driver.

    `mount`: the cgroup v2 mount (None: none); `v1`: the wanted controllers that this machine
    binds to cgroup v1, and where their hierarchy is mounted."""

    def __init__(self, mount: Path | None, v1: Mapping[str, Path] | None = None,
                 parent: str = "cumulo", scope: str = "") -> None:
        self.mount = mount
        self.v1 = dict(v1 or {})
        self.parent = parent
        self.scope = scope  # tells apart the hosts of one machine (VM ids are unique anyway)
        self._warned: set[str] = set()

    @classmethod
    def of_machine(cls, scope: str = "", mountinfo: Path = MOUNTINFO) -> VmCgroups:
        """The cgroups this machine's mounts offer (a kernel binds a controller to v1 or v2,
        never both: one mounted as v1 is one cgroup v2 lacks)."""
        return cls(cgroup2_mount(mountinfo), v1_mounts(WANTED, mountinfo), scope=scope)

    @classmethod
    def for_runtime(cls, runtime_dir: Path) -> VmCgroups:
        """The cgroups of the VMs of one host (its runtime dir): `cumulo/<vm id>.<10 hex>`."""
        return cls.of_machine(hashlib.sha256(os.fsencode(runtime_dir)).hexdigest()[:10])

    def _name(self, vm_id: str) -> str:
        return f"{vm_id}.{self.scope}" if self.scope else vm_id

    def path(self, vm_id: str) -> Path | None:
        """The VM's cgroup v2 (None: no cgroup v2 here)."""
        return None if self.mount is None else self.mount / self.parent / self._name(vm_id)

    def roots(self) -> list[Path]:
        """Every hierarchy the VMs get a directory in: cgroup v2's, then each v1 one once."""
        return list(dict.fromkeys([*([self.mount] if self.mount is not None else []),
                                   *self.v1.values()]))

    def v1_paths(self, vm_id: str) -> dict[Path, list[str]]:
        """The VM's cgroup v1 directories, each with the wanted controllers it limits."""
        out: dict[Path, list[str]] = {}
        for controller, mount in self.v1.items():
            out.setdefault(mount / self.parent / self._name(vm_id), []).append(controller)
        return out

    def prepare(self, vm_id: str, vcpus: int, ram_mib: int) -> tuple[Path, ...]:
        """The VM's cgroups, made and limited as far as this machine allows (none: QEMU runs
        where the agent does). QEMU joins each (qemu_exec --cgroup)."""
        made: list[Path] = []
        missing = [c for c in WANTED if c not in self.v1]
        path = self.path(vm_id)
        if path is None:
            self._warn("nomount", "no cgroup v2 hierarchy is mounted: VMs are not grouped")
        elif self._mkdir(path):
            made.append(path)
            lacks = self._enable(path.parent)
            missing = [c for c in missing if c in lacks]
            self._write(path, {k: v for k, v in limits(vcpus, ram_mib).items()
                               if (path / k).exists()})
        for v1_path, controllers in self.v1_paths(vm_id).items():
            if self._mkdir(v1_path):
                made.append(v1_path)
                for c in controllers:
                    self._write(v1_path, {k: v for k, v in v1_limits(c, vcpus, ram_mib).items()
                                          if (v1_path / k).exists()})
            else:
                missing += controllers
        if missing:
            self._warn("controllers", f"no writable cgroup (v2 at {self.mount}, or v1) has the"
                       f" controllers {', '.join(sorted(missing))}: VMs run without those"
                       " limits")
        return tuple(made)

    def remove(self, vm_id: str, wait_s: float = 0.0) -> None:
        """Remove the VM's cgroups. The kernel refuses (EBUSY) while a process is in one, and
        a QEMU that has just exited (its /proc cmdline already empty) leaves its cgroups a
        moment later: a caller that saw it exit waits up to `wait_s` for that."""
        deadline = time.monotonic() + wait_s
        for root in self.roots():
            path = root / self.parent / self._name(vm_id)
            while True:
                try:
                    path.rmdir()
                except OSError as e:  # gone already (ENOENT), or still in use
                    if e.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                break

    def _mkdir(self, path: Path) -> bool:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._warn(f"mkdir {path.parent}", f"cannot create cgroups under {path.parent}:"
                       f" {e}; VMs run without them")
            return False
        return True

    def _write(self, path: Path, files: Mapping[str, str]) -> None:
        """Write the limit files in order; what the kernel refused once is tried again after
        the others (a group kept from a smaller VM: memory.limit_in_bytes may exceed the old
        memsw limit until that one is written)."""
        todo = list(files)
        errors: dict[str, OSError] = {}
        for _ in range(2):
            errors = {}
            for name in todo:
                try:
                    (path / name).write_text(files[name])
                except OSError as e:
                    errors[name] = e
            todo = list(errors)
        for name, error in errors.items():
            self._warn(name, f"cannot set {name} of VM cgroups: {error}")

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
