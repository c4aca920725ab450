"""The driver contract: one suite, run on the fake driver and on the QEMU driver (real VMs).

The QEMU harness boots real VMs under TCG from the built-in tiny image (one qcow2 overlay per
VM) in a short temp dir, and kills by pid every QEMU it started when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import (
    Driver,
    DriverError,
    LocalFile,
    Observed,
    PowerState,
    VMSpec,
    VolumeAttachment,
)
from cumulo.agent.drivers.fake import FakeDriver, FakeHost
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.domain.arch import Arch
from tests.contract.qemu_pids import kill_all, wait_pid_gone

READY = "cumulo-tiny: ready"


@dataclass
class Guest:
    kernel: Path
    initrd: Path
    rootfs: Path
    cmdline: str


@dataclass
class Harness:
    kind: str
    driver: Driver
    workdir: Path
    reopen: Callable[[], Driver]  # a new driver on the same host (agent restart)
    crash: Callable[[str], None]  # the VM's process dies without anyone asking
    guest: Guest | None = None
    boot_timeout: float = 60.0
    ready: str = READY
    n: int = 0

    def spec(self, *, missing_disk: bool = False) -> VMSpec:
        self.n += 1
        vm_id = f"i-{self.n:017x}"
        disk = self.workdir / f"{vm_id}.qcow2"
        if self.guest is None:
            if not missing_disk:
                disk.write_bytes(b"")
            return VMSpec(vm_id, f"host{self.n}", Arch.X86_64, 1, 128, disk)
        if not missing_disk:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.guest.rootfs),
                 "-F", "qcow2", str(disk)],
                check=True,
            )  # fmt: skip
        return VMSpec(
            vm_id=vm_id,
            hostname=f"host{self.n}",
            arch=Arch.X86_64,
            vcpus=1,
            ram_mib=128,
            boot_disk=disk,
            kernel=self.guest.kernel,
            initrd=self.guest.initrd,
            kernel_cmdline=self.guest.cmdline,
        )

    def volume(self, n: int, size: str = "1G", iops: int = 0, mbps: int = 0) -> VolumeAttachment:
        """A fresh standalone qcow2 volume file (real for both drivers)."""
        vol_id = f"vol-{n:017x}"
        path = self.workdir / f"{vol_id}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
        return VolumeAttachment(vol_id, LocalFile(path), iops, mbps)

    async def wait_console(self, vm_id: str, count: int = 1, driver: Driver | None = None) -> str:
        """Poll the console until the guest has said it is ready `count` times."""
        drv = driver or self.driver
        deadline = time.monotonic() + self.boot_timeout * count
        while True:
            log = await drv.console_log(vm_id)
            if log.count(self.ready) >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{vm_id} not ready {count}x; console:\n{log[-3000:]}")
            await asyncio.sleep(0.1)


@pytest.fixture(scope="session")
def tiny_guest(tiny_image_x86_64: Path) -> Guest:
    meta = json.loads((tiny_image_x86_64 / "image.json").read_text())
    return Guest(
        kernel=tiny_image_x86_64 / "vmlinuz",
        initrd=tiny_image_x86_64 / "initrd.img",
        rootfs=tiny_image_x86_64 / "rootfs.qcow2",
        cmdline=str(meta["kernel_cmdline"]),
    )


@pytest.fixture(params=["fake", pytest.param("qemu", marks=pytest.mark.qemu)])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    workdir = Path(tempfile.mkdtemp(prefix="cd-"))
    try:
        if request.param == "fake":
            host = FakeHost()
            fake = FakeDriver(host)

            def crash_fake(vm_id: str) -> None:
                fake.simulate_crash(vm_id)

            yield Harness("fake", fake, workdir, lambda: FakeDriver(host), crash_fake)
            return
        guest: Guest = request.getfixturevalue("tiny_guest")
        runtime = workdir / "run"
        qemu = QemuDriver(runtime, accel="tcg")

        def crash_qemu(vm_id: str) -> None:
            pid = int((runtime / vm_id / "qemu.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            wait_pid_gone(pid)

        h = Harness("qemu", qemu, workdir, lambda: QemuDriver(runtime, accel="tcg"), crash_qemu)
        h.guest = guest
        try:
            yield h
        finally:
            kill_all(runtime)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- the contract ---------------------------------------------------------------------------


async def observed(driver: Driver, vm_id: str) -> Observed:
    return (await driver.observe())[vm_id]


async def wait_power(
    driver: Driver, vm_id: str, wanted: set[PowerState], timeout: float
) -> Observed:
    deadline = time.monotonic() + timeout
    while True:
        obs = await observed(driver, vm_id)
        if obs.power in wanted:
            return obs
        if time.monotonic() > deadline:
            raise AssertionError(f"{vm_id} still {obs} after {timeout}s (wanted {wanted})")
        await asyncio.sleep(0.2)


async def test_start_runs_and_is_idempotent(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    first = await d.start(spec)
    assert first.power is PowerState.RUNNING and first.pid is not None
    log = await harness.wait_console(spec.vm_id)
    assert log.strip()
    obs = await observed(d, spec.vm_id)
    assert (obs.power, obs.pid) == (PowerState.RUNNING, first.pid)
    again = await d.start(spec)
    assert (again.power, again.pid) == (PowerState.RUNNING, first.pid)
    assert list(await d.observe()) == [spec.vm_id]


async def test_reboot_keeps_running_and_boots_again(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    pid = (await d.start(spec)).pid
    await harness.wait_console(spec.vm_id)
    await d.reboot(spec.vm_id)
    await harness.wait_console(spec.vm_id, count=2)
    obs = await observed(d, spec.vm_id)
    assert (obs.power, obs.pid) == (PowerState.RUNNING, pid)


async def test_guest_shutdown_then_force_stop_is_stopped(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    await d.start(spec)
    await harness.wait_console(spec.vm_id)
    await d.request_shutdown(spec.vm_id)
    await wait_power(d, spec.vm_id, {PowerState.SHUTDOWN, PowerState.STOPPED}, timeout=30)
    # Guest powered off: cleaning up the process is the reconciler's call.
    await d.force_stop(spec.vm_id)
    obs = await observed(d, spec.vm_id)
    assert obs.power is PowerState.STOPPED, obs
    assert obs.pid is None
    await d.force_stop(spec.vm_id)  # idempotent
    assert (await observed(d, spec.vm_id)).power is PowerState.STOPPED


async def test_force_stop_then_start_again_clears_the_stop_marker(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    first = await d.start(spec)
    await d.force_stop(spec.vm_id)
    assert (await observed(d, spec.vm_id)).power is PowerState.STOPPED
    second = await d.start(spec)
    assert second.power is PowerState.RUNNING and second.pid != first.pid
    # The marker of the earlier stop must not turn a later crash into a clean stop.
    harness.crash(spec.vm_id)
    assert (await observed(d, spec.vm_id)).power is PowerState.CRASHED


async def test_crash_is_reported_with_a_reason(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    pid = (await d.start(spec)).pid
    harness.crash(spec.vm_id)
    obs = await observed(d, spec.vm_id)
    assert obs.power is PowerState.CRASHED
    assert obs.pid is None
    assert "unexpectedly" in obs.reason and str(pid) in obs.reason
    with pytest.raises(DriverError):
        await d.reboot(spec.vm_id)
    # Acknowledging the crash (force_stop) leaves a cleanly stopped VM.
    await d.force_stop(spec.vm_id)
    assert (await observed(d, spec.vm_id)).power is PowerState.STOPPED


async def test_new_driver_instance_readopts_running_vms(harness: Harness) -> None:
    spec = harness.spec()
    pid = (await harness.driver.start(spec)).pid
    await harness.wait_console(spec.vm_id)
    fresh = harness.reopen()  # the agent restarted
    obs = await observed(fresh, spec.vm_id)
    assert (obs.power, obs.pid) == (PowerState.RUNNING, pid)
    assert (await fresh.start(spec)).pid == pid
    assert harness.ready in await fresh.console_log(spec.vm_id)
    # Controls work through the adopted VM's QMP socket, not only by pid.
    await fresh.request_shutdown(spec.vm_id)
    await wait_power(fresh, spec.vm_id, {PowerState.SHUTDOWN, PowerState.STOPPED}, timeout=30)
    await fresh.force_stop(spec.vm_id)
    assert (await observed(fresh, spec.vm_id)).power is PowerState.STOPPED


async def test_destroy_removes_the_vm(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    await d.start(spec)
    await d.destroy(spec.vm_id)
    assert spec.vm_id not in await d.observe()
    assert await d.console_log(spec.vm_id) == ""
    await d.destroy(spec.vm_id)  # idempotent


async def test_unknown_vm(harness: Harness) -> None:
    d = harness.driver
    await d.force_stop("i-00000000000000bad")
    await d.destroy("i-00000000000000bad")
    await d.request_shutdown("i-00000000000000bad")
    assert await d.console_log("i-00000000000000bad") == ""
    with pytest.raises(DriverError):
        await d.reboot("i-00000000000000bad")
    with pytest.raises(DriverError):
        await d.resume("i-00000000000000bad")
    assert await d.observe() == {}


async def test_resume_of_a_running_vm_changes_nothing(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    pid = (await d.start(spec)).pid
    await harness.wait_console(spec.vm_id)
    await d.resume(spec.vm_id)
    obs = await observed(d, spec.vm_id)
    assert (obs.power, obs.pid, obs.io_errors) == (PowerState.RUNNING, pid, ())


async def test_start_with_a_missing_disk_fails_clearly(harness: Harness) -> None:
    spec = harness.spec(missing_disk=True)
    with pytest.raises(DriverError, match="boot disk"):
        await harness.driver.start(spec)
    assert spec.vm_id not in await harness.driver.observe()


# -- block volumes --------------------------------------------------------------------------


def qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    info: dict[str, object] = json.loads(out)
    return info


async def test_volume_hotplug_resize_snapshot_detach(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    await d.start(spec)
    await harness.wait_console(spec.vm_id)  # the guest must be up to release a disk
    vol = harness.volume(1, iops=200, mbps=10)
    await d.attach_volume(spec.vm_id, vol)
    assert await d.attached_volumes(spec.vm_id) == {vol.volume_id}
    await d.attach_volume(spec.vm_id, vol)  # idempotent
    # A new driver (agent restart) asks the hypervisor, not its memory.
    assert await harness.reopen().attached_volumes(spec.vm_id) == {vol.volume_id}

    await d.resize_volume(spec.vm_id, vol, 2 * 2**30)
    assert vol.path is not None  # harness.volume(): a local qcow2 file
    assert qemu_img_info(vol.path)["virtual-size"] == 2 * 2**30

    target = harness.workdir / "snap.qcow2"
    await d.snapshot_volume(spec.vm_id, vol.volume_id, target)
    info = qemu_img_info(target)  # a standalone qcow2: no backing file
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert info["virtual-size"] == 2 * 2**30
    subprocess.run(["qemu-img", "check", "-q", str(target)], check=True)
    with pytest.raises(DriverError, match="exists"):
        await d.snapshot_volume(spec.vm_id, vol.volume_id, target)

    await d.detach_volume(spec.vm_id, vol.volume_id, timeout_s=30)
    assert await d.attached_volumes(spec.vm_id) == set()
    await d.detach_volume(spec.vm_id, vol.volume_id, timeout_s=30)  # not attached: a no-op
    # Everything was released: the same volume plugs in again.
    await d.attach_volume(spec.vm_id, vol)
    assert await d.attached_volumes(spec.vm_id) == {vol.volume_id}


async def test_cold_attached_volumes_are_seen_and_hot_unpluggable(harness: Harness) -> None:
    d = harness.driver
    a, b = harness.volume(1), harness.volume(2)
    spec = dataclasses.replace(harness.spec(), volumes=(a, b))
    await d.start(spec)
    await harness.wait_console(spec.vm_id)
    assert await d.attached_volumes(spec.vm_id) == {a.volume_id, b.volume_id}
    await d.detach_volume(spec.vm_id, a.volume_id, timeout_s=30)
    assert await harness.reopen().attached_volumes(spec.vm_id) == {b.volume_id}
    # A stopped VM holds nothing; it gets the spec's volumes again at its next start.
    await d.force_stop(spec.vm_id)
    assert await d.attached_volumes(spec.vm_id) == set()
    await d.start(spec)
    assert await d.attached_volumes(spec.vm_id) == {a.volume_id, b.volume_id}


async def test_volume_calls_on_unknown_or_stopped_vms(harness: Harness) -> None:
    d = harness.driver
    vol = harness.volume(1)
    unknown = "i-00000000000000bad"
    assert await d.attached_volumes(unknown) == set()
    await d.detach_volume(unknown, vol.volume_id, timeout_s=1)  # nothing attached: no-op
    with pytest.raises(DriverError, match="not running"):
        await d.attach_volume(unknown, vol)
    with pytest.raises(DriverError):
        await d.resize_volume(unknown, vol, 2**31)
    spec = harness.spec()
    await d.start(spec)
    with pytest.raises(DriverError, match="not attached"):
        await d.resize_volume(spec.vm_id, vol, 2**31)
    with pytest.raises(DriverError, match="not attached"):
        await d.snapshot_volume(spec.vm_id, vol.volume_id, harness.workdir / "s.qcow2")
    assert not (harness.workdir / "s.qcow2").exists()
    missing = VolumeAttachment("vol-000000000000000ff", LocalFile(harness.workdir / "nope.qcow2"))
    with pytest.raises(DriverError, match="does not exist"):
        await d.attach_volume(spec.vm_id, missing)
    assert await d.attached_volumes(spec.vm_id) == set()
    with pytest.raises(DriverError, match="volume vol-000000000000000ff"):
        await d.start(dataclasses.replace(harness.spec(), volumes=(missing,)))


async def test_serial_port_is_interactive_and_ends_with_the_vm(harness: Harness) -> None:
    d = harness.driver
    spec = harness.spec()
    with pytest.raises(DriverError, match="not running"):
        await d.open_serial(spec.vm_id)
    await d.start(spec)
    await harness.wait_console(spec.vm_id)
    port = await d.open_serial(spec.vm_id)
    try:
        # Typing reaches the guest (the tiny image's getty, the fake's shell), which answers.
        seen = b""
        async with asyncio.timeout(harness.boot_timeout):
            while b"login:" not in seen and b"fake# " not in seen:
                await port.write(b"\r")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        while b"login:" not in seen and b"fake# " not in seen:
                            seen += await port.read()
        await d.force_stop(spec.vm_id)
        async with asyncio.timeout(10):
            while await port.read():
                pass  # the port ends with the VM
    finally:
        await port.close()
