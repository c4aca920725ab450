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
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError, LocalFile, PowerState, VMSpec, VolumeAttachment
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.drivers.qemu_cgroup import limits, pid_cgroup
from cumulo.agent.drivers.qemu_confine import read_uid
from cumulo.agent.drivers.qmp import close_session, qmp_execute
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


def test_each_vm_sits_in_its_own_cgroup(host: Host) -> None:
    groups = host.driver().cgroups
    if groups.mount is None:
        pytest.skip("no cgroup v2 hierarchy on this machine")
    for vm in (A, B):
        path = groups.path(vm)
        assert path is not None and path.parent == groups.mount / "cumulo"
        assert pid_cgroup(host.pid(vm)) == "/" + str(path.relative_to(groups.mount))
        assert str(host.pid(vm)) in (path / "cgroup.procs").read_text().split()


def test_each_vms_cgroup_has_its_limits(host: Host) -> None:
    groups = host.driver().cgroups
    mount, group = groups.mount, groups.path(A)
    if mount is None or group is None:
        pytest.skip("no cgroup v2 hierarchy on this machine")
    present = {name: value for name, value in limits(1, 128).items() if (group / name).exists()}
    if not present:
        controllers = (mount / "cgroup.controllers").read_text().split()
        pytest.skip(f"cgroup v2 here has no cpu/memory/pids controller (only {controllers});"
                    " the VM is grouped but not limited")
    for name, value in present.items():
        assert (group / name).read_text().split() == value.split(), name


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
