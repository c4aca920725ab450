"""A VM's QEMU is confined: its own uid, its seccomp sandbox, its own files only, its cgroup.

Everything is asked of the real process: /proc/PID/status, /proc/PID/cgroup, the cgroup's
files, and the VM's own monitor (QMP), through which a compromised QEMU would try to open
another VM's disk or the host's /etc/shadow, or to run a program.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError, LocalFile, PowerState, VMSpec, VolumeAttachment
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.drivers.qemu_cgroup import VmCgroups, limits, pid_cgroup
from cumulo.agent.drivers.qemu_cgroup_v1 import memory_bytes, v1_limits
from cumulo.agent.drivers.qemu_confine import read_uid
from cumulo.agent.drivers.qmp import close_session, qmp_execute
from cumulo.agent.storage.seed import build_seed_iso
from cumulo.domain.arch import Arch
from tests.contract.qemu_pids import kill_all

pytestmark = pytest.mark.qemu

A, B = "i-00000000000c0ffe1", "i-00000000000c0ffe2"


@dataclass
class Host:
    workdir: Path
    specs: dict[str, VMSpec]

    @property
    def runtime(self) -> Path:
        return self.workdir / "run"

    def driver(self) -> QemuDriver:
        return QemuDriver(self.runtime, accel="tcg")

    def pid(self, vm_id: str) -> int:
        return int((self.runtime / vm_id / "qemu.pid").read_text())

    def uid(self, vm_id: str) -> int:
        uid = read_uid(self.runtime / vm_id)
        assert uid is not None
        return uid

    def sock(self, vm_id: str) -> Path:
        return self.runtime / vm_id / "qmp.sock"


def blank(workdir: Path, vm_id: str) -> VMSpec:
    """A VM with an empty disk (it sits in its firmware: enough to hold a process)."""
    disk = workdir / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    return VMSpec(vm_id, vm_id[-5:], Arch.X86_64, 1, 64, disk)


def tiny(workdir: Path, image: Path, vm_id: str) -> VMSpec:
    """A VM booting the tiny image (a guest that answers hot-unplug)."""
    disk = workdir / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image / "rootfs.qcow2"),
                    "-F", "qcow2", str(disk)], check=True)  # fmt: skip
    meta = json.loads((image / "image.json").read_text())
    return VMSpec(vm_id, "a", Arch.X86_64, 1, 128, disk, kernel=image / "vmlinuz",
                  initrd=image / "initrd.img", kernel_cmdline=str(meta["kernel_cmdline"]))


@pytest.fixture(scope="module")
def host(tiny_image_x86_64: Path) -> Iterator[Host]:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is needed")
    workdir = Path(tempfile.mkdtemp(prefix="cq-"))
    h = Host(workdir, {A: tiny(workdir, tiny_image_x86_64, A), B: blank(workdir, B)})

    async def start() -> None:
        d = h.driver()
        for spec in h.specs.values():
            await d.start(spec)
            await close_session(h.sock(spec.vm_id))

    try:
        asyncio.run(start())
        yield h
    finally:
        kill_all(h.runtime)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
async def _own_sessions(host: Host) -> AsyncIterator[None]:
    """Each test runs in its own event loop: it leaves the monitors free for the next."""
    yield
    for vm in (A, B):
        await close_session(host.sock(vm))


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def blockdev_add(host: Host, vm_id: str, path: Path, node: str) -> None:
    await qmp_execute(host.sock(vm_id), "blockdev-add", {
        "driver": "file", "node-name": node, "filename": str(path), "read-only": True,
    }, timeout=5)  # fmt: skip
    await qmp_execute(host.sock(vm_id), "blockdev-del", {"node-name": node}, timeout=5)


def test_each_qemu_runs_as_its_own_unprivileged_uid_in_its_sandbox(host: Host) -> None:
    uids = {vm: host.uid(vm) for vm in (A, B)}
    assert uids[A] != uids[B] and min(uids.values()) >= 1000
    for vm, uid in uids.items():
        st = status(host.pid(vm))
        assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]  # real, effective, saved, fs
        assert st["Gid"].split() == [str(uid)] * 4 and st["Groups"] == ""
        assert st["CapEff"] == "0000000000000000"
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"  # the filter is on
        # its files: the VM's own; its directory: root's (QEMU cannot add or swap a file)
        assert os.stat(host.specs[vm].boot_disk).st_uid == uid
        assert os.stat(host.runtime / vm / "console.log").st_uid == uid
        vm_dir = os.stat(host.runtime / vm)
        assert vm_dir.st_uid == 0 and vm_dir.st_mode & 0o022 == 0
        assert os.stat(host.sock(vm)).st_uid == 0


async def test_qemu_cannot_open_another_vms_disk_nor_the_hosts_shadow(host: Host) -> None:
    await blockdev_add(host, A, Path("/etc/hostname"), "probe")  # a readable file opens
    for path in (host.specs[B].boot_disk, Path("/etc/shadow")):
        with pytest.raises(DriverError, match="Permission denied"):
            await blockdev_add(host, A, path, "probe")


async def test_a_volume_is_the_vms_only_while_attached(host: Host) -> None:
    path = host.workdir / "vol-000000000000c0ffe.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    vol = VolumeAttachment("vol-000000000000c0ffe", LocalFile(path))
    d = host.driver()
    deadline = time.monotonic() + 120
    while "cumulo-tiny: ready" not in await d.console_log(A):  # it will let go of the disk
        assert time.monotonic() < deadline, await d.console_log(A)
        await asyncio.sleep(0.2)
    await d.attach_volume(A, vol)
    st = os.stat(path)
    assert (st.st_uid, st.st_mode & 0o777) == (host.uid(A), 0o600)
    with pytest.raises(DriverError, match="Permission denied"):
        await blockdev_add(host, B, path, "steal")
    snap = host.workdir / "snap-000000000000c0ffe.qcow2"
    await d.snapshot_volume(A, vol.volume_id, snap)
    assert os.stat(snap).st_uid == 0  # the copy QEMU wrote is the host's once done
    await d.detach_volume(A, vol.volume_id, timeout_s=30)
    assert os.stat(path).st_uid == 0
    with pytest.raises(DriverError, match="Permission denied"):
        await blockdev_add(host, A, path, "again")


async def test_the_sandbox_kills_a_qemu_that_tries_to_run_a_program(host: Host) -> None:
    spec = blank(host.workdir, "i-00000000000c0ffe3")
    d = host.driver()
    await d.start(spec)
    pid = host.pid(spec.vm_id)
    marker = host.workdir / "spawned"
    os.chmod(host.workdir, 0o777)  # the program could write here if it ran
    try:
        with pytest.raises(DriverError):  # the monitor goes away with the process
            await qmp_execute(host.sock(spec.vm_id), "migrate",
                              {"uri": f"exec:touch {marker}"}, timeout=5)
            await qmp_execute(host.sock(spec.vm_id), "query-migrate", timeout=5)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}/cmdline").exists() and Path(
                f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        obs = (await d.observe())[spec.vm_id]
        assert obs.power is PowerState.CRASHED, obs
        assert not marker.exists()
    finally:
        os.chmod(host.workdir, 0o711)
        await close_session(host.sock(spec.vm_id))
        await d.destroy(spec.vm_id)


def v1_memberships(pid: int) -> dict[str, str]:
    """The cgroup v1 path of a process per controller ("memory": "/cumulo/i-...")."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        out.update(dict.fromkeys(controllers.split(","), path))
    return out


def v1_here() -> set[str]:
    """The controllers a VM is limited by that this machine binds to cgroup v1 (as this
    process's own memberships show)."""
    return {"cpu", "memory", "pids"} & set(v1_memberships(os.getpid()))


def test_each_vm_sits_in_its_own_cgroup(host: Host) -> None:
    groups = host.driver().cgroups
    if groups.mount is None and not v1_here():
        pytest.skip("no cgroup hierarchy (v2, nor v1 cpu/memory/pids) on this machine")
    assert set(groups.v1) == v1_here()
    for vm in (A, B):
        pid = host.pid(vm)
        path = groups.path(vm)
        if groups.mount is not None:
            assert path is not None and path.parent == groups.mount / "cumulo"
            assert pid_cgroup(pid) == "/" + str(path.relative_to(groups.mount))
            assert str(pid) in (path / "cgroup.procs").read_text().split()
        for v1_path, controllers in groups.v1_paths(vm).items():
            for c in controllers:
                assert v1_path.parent == groups.v1[c] / "cumulo"
                assert v1_memberships(pid)[c] == f"/cumulo/{v1_path.name}", c
            if path is not None:
                assert v1_path.name == path.name  # one name in every hierarchy
            assert str(pid) in (v1_path / "cgroup.procs").read_text().split()


def test_each_vms_cgroup_has_its_limits(host: Host) -> None:
    groups = host.driver().cgroups
    limited: set[str] = set()
    for vm, spec in host.specs.items():
        group = groups.path(vm)
        if group is not None:
            for name, value in limits(spec.vcpus, spec.ram_mib).items():
                if (group / name).exists():
                    assert (group / name).read_text().split() == value.split(), name
                    limited.add(name.split(".")[0])
        for v1_path, controllers in groups.v1_paths(vm).items():
            for c in controllers:
                files = v1_limits(c, spec.vcpus, spec.ram_mib)
                assert (v1_path / next(iter(files))).exists(), (v1_path, c)  # the limit itself
                for name, value in files.items():  # and memsw where swap is accounted
                    if (v1_path / name).exists():
                        assert (v1_path / name).read_text().strip() == value, name
                limited.add(c)
    if not limited and not v1_here():
        controllers = (groups.mount / "cgroup.controllers").read_text().split() \
            if groups.mount is not None else []
        pytest.skip(f"neither cgroup v2 (controllers: {controllers}) nor a writable cgroup v1"
                    " here has cpu/memory/pids: the VM is not limited")
    writable = {c for c in v1_here() if os.access(groups.v1[c], os.W_OK)}  # not read-only
    assert writable <= limited  # every controller this machine has in v1 limits the VMs


def test_a_kept_cgroup_takes_the_new_limits_of_a_resized_vm(host: Host) -> None:
    groups = VmCgroups.for_runtime(host.runtime)
    vm = "i-00000000000c0ffe9"
    if "memory" not in v1_here():
        pytest.skip("no cgroup v1 memory hierarchy here")
    try:
        made = groups.prepare(vm, 1, 128)  # a crashed VM keeps its groups until started again
        assert groups.prepare(vm, 1, 1024) == made  # grown: the kernel refuses RAM > RAM+swap
        memory = next(p for p, cs in groups.v1_paths(vm).items() if "memory" in cs)
        for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            if (memory / name).exists():
                assert int((memory / name).read_text()) == memory_bytes(1024), name
    finally:
        groups.remove(vm)
    assert not any(p.exists() for p in made)


async def test_a_restarted_agent_finds_each_vm_with_its_uid(host: Host) -> None:
    before = {vm: (host.pid(vm), host.uid(vm)) for vm in (A, B)}
    d = host.driver()  # a new driver on the same runtime dir: the restarted agent
    seen = await d.observe()
    for vm in (A, B):
        assert (seen[vm].power, seen[vm].pid) == (PowerState.RUNNING, before[vm][0])
    await d.force_stop(B)
    await d.start(host.specs[B])
    assert host.uid(B) == before[B][1] and host.pid(B) != before[B][0]
    assert status(host.pid(B))["Uid"].split()[0] == str(before[B][1])


def test_a_vms_cgroups_go_once_its_process_has_left_them(host: Host) -> None:
    groups = VmCgroups.for_runtime(host.runtime)
    vm = "i-00000000000c0ffe8"
    made = groups.prepare(vm, 1, 64)
    if not made:
        pytest.skip("no writable cgroup hierarchy here")
    proc = subprocess.Popen(["sleep", "60"])  # the test's own process, in the VM's groups
    try:
        for d in made:
            (d / "cgroup.procs").write_text(str(proc.pid))
        def end() -> None:
            proc.kill()
            proc.wait()

        threading.Timer(0.3, end).start()
        groups.remove(vm, wait_s=10)  # still in use at first: removed once the process left
        assert not any(d.exists() for d in made)
    finally:
        proc.kill()
        proc.wait()
        groups.remove(vm, wait_s=5)


# The guest fills all its RAM (a tmpfs as large as the RAM, of zeroes written) once the host
# plugs in a disk: the host first lowers the VM's memory limit below what that needs.
FILL = b"""#!/bin/sh
disks() { ls /sys/block | grep -c '^vd'; }
n=$(disks)
echo "fill-wait $(grep MemFree /proc/meminfo)"
while [ "$(disks)" -le "$n" ]; do sleep 1; done
mkdir -p /run/fill && mount -t tmpfs -o size=1G tmpfs /run/fill
echo fill-start
dd if=/dev/zero of=/run/fill/z bs=1M count=RAM 2>&1
echo "fill-end $?"
"""
FILL_RAM_MIB = 256
FILL_MARGIN_MIB = 48  # what QEMU may still grow by: far less than the guest's free RAM


@dataclass(frozen=True)
class MemoryGroup:
    """A VM's memory cgroup, v1 or v2, by the names of its files."""

    dir: Path
    limit: str
    usage: str
    peak: str
    file_cache: str  # the key of memory.stat for page cache (reclaimable, not QEMU's own)
    oom_kills: str  # the file with its "oom_kill N" line

    def read(self, name: str) -> int:
        return int((self.dir / name).read_text().split()[0])

    def stat(self, file: str, key: str) -> int:
        lines = (self.dir / file).read_text().splitlines()
        return next(int(v) for k, v in (line.split() for line in lines) if k == key)


def memory_group(groups: VmCgroups, vm: str) -> MemoryGroup | None:
    assert ("memory" in groups.v1) == ("memory" in v1_here())
    for v1_path, controllers in groups.v1_paths(vm).items():
        if "memory" in controllers:
            return MemoryGroup(v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                               "memory.max_usage_in_bytes", "total_cache", "memory.oom_control")
    v2_path = groups.path(vm)
    if v2_path is not None and (v2_path / "memory.peak").exists():
        return MemoryGroup(v2_path, "memory.max", "memory.current", "memory.peak", "file",
                           "memory.events")
    return None


async def test_a_guest_that_fills_its_ram_cannot_take_the_host_beyond_its_limit(
        host: Host, tiny_image_x86_64: Path) -> None:
    vm = "i-00000000000c0ffe4"
    seed = host.workdir / f"{vm}.iso"
    build_seed_iso(seed, instance_id=vm, hostname="fill",
                   user_data=FILL.replace(b"RAM", str(FILL_RAM_MIB).encode()))
    spec = replace(tiny(host.workdir, tiny_image_x86_64, vm), ram_mib=FILL_RAM_MIB,
                   seed_iso=seed)
    d = host.driver()
    await d.start(spec)
    try:
        group = memory_group(d.cgroups, vm)
        if group is None:
            pytest.skip("no memory cgroup (v2 memory.peak, nor v1) for VMs on this machine")
        assert group.read(group.limit) == memory_bytes(FILL_RAM_MIB)  # its own, first
        log = await wait_console(d, vm, "fill-wait")
        # QEMU's own memory now (its page cache aside: the kernel reclaims that first) plus a
        # margin far below the guest's free RAM, which the fill touches page by page
        own = group.read(group.usage) - group.stat("memory.stat", group.file_cache)
        limit = own + FILL_MARGIN_MIB * 2**20
        (group.dir / group.limit).write_text(str(limit))
        if group.peak == "memory.max_usage_in_bytes":
            (group.dir / group.peak).write_text("0")  # the peak from now on
        kills = group.stat(group.oom_kills, "oom_kill")
        pid = host.pid(vm)
        disk = host.workdir / "vol-00000000000c0ffe4.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
        await d.attach_volume(vm, VolumeAttachment("vol-00000000000c0ffe4", LocalFile(disk)))
        deadline = time.monotonic() + 45
        while Path(f"/proc/{pid}").exists() and "fill-end" not in log:
            assert time.monotonic() < deadline, log[-2000:]
            await asyncio.sleep(0.2)
            log = await d.console_log(vm)
        # The kernel's outcome: QEMU, over its limit, is OOM-killed (the guest never had the
        # host's memory); the agent sees a crashed VM.
        assert "fill-start" in log and "fill-end" not in log, log[-2000:]
        assert group.stat(group.oom_kills, "oom_kill") == kills + 1
        assert group.read(group.peak) <= limit
        assert (await d.observe())[vm].power is PowerState.CRASHED
    finally:
        await close_session(host.sock(vm))
        await d.destroy(vm)


async def wait_console(d: QemuDriver, vm: str, marker: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while marker not in (log := await d.console_log(vm)):
        assert time.monotonic() < deadline, log[-2000:]
        await asyncio.sleep(0.2)
    return log
