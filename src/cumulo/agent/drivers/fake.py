"""An in-memory driver with the QEMU driver's semantics and none of its cost.

Transitions are instant, but they follow the same rules as real VMs: a shutdown request
powers the guest off (SHUTDOWN, process still there) as seen by the next observe; force_stop
makes it STOPPED; a process that vanishes without a request is CRASHED. It is cheap enough to
simulate 100 hosts x 2,000 VMs in one process.

The VMs live in a `FakeHost` (the "hypervisor"), separate from the `FakeDriver` (the agent's
view of it): a new FakeDriver on the same FakeHost re-adopts its VMs, like a restarted agent.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from cumulo.agent.drivers.base import (
    MAX_VOLUMES,
    DetachTimeout,
    DriverError,
    Observed,
    PowerState,
    VMSpec,
    VolumeAttachment,
    check_spec_files,
)
from cumulo.agent.drivers.fake_host import LIVE, FakeVM, running
from cumulo.agent.drivers.fake_host import FakeHost as FakeHost  # where callers look for it
from cumulo.agent.drivers.fake_migration import FakeFabric as FakeFabric
from cumulo.agent.drivers.fake_migration_calls import FakeMigrationCalls
from cumulo.agent.drivers.fake_serial import FakeSerialPort
from cumulo.agent.drivers.qemu_process import qemu_img
from cumulo.agent.drivers.serial import SerialPort
from cumulo.domain.disk_errors import DiskIoError


class FakeDriver(FakeMigrationCalls):
    name = "fake"

    def __init__(self, host: FakeHost | None = None, *, check_paths: bool = True) -> None:
        """`check_paths=False` skips the boot disk/kernel existence checks (benchmarks)."""
        self.host = host if host is not None else FakeHost()
        self.check_paths = check_paths

    async def observe(self) -> dict[str, Observed]:
        result: dict[str, Observed] = {}
        for vm_id, vm in self.host.vms.items():
            if vm.shutdown_pending:
                vm.shutdown_pending = False
                if vm.observed.power is PowerState.RUNNING:
                    vm.events.append("poweroff")
                    vm.observed = Observed(vm_id, PowerState.SHUTDOWN, vm.observed.pid,
                                           power_off_requested=vm.power_off_asked)
            result[vm_id] = vm.observed
        return result

    async def start(self, spec: VMSpec) -> Observed:
        vm = self.host.vms.get(spec.vm_id)
        if vm is not None and vm.observed.power in LIVE:
            return vm.observed
        if self.check_paths:
            check_spec_files(spec)
        observed = Observed(spec.vm_id, PowerState.RUNNING, next(self.host.pids))
        if len(spec.volumes) > MAX_VOLUMES:
            raise DriverError(
                f"cannot start {spec.vm_id}: {len(spec.volumes)} volumes attached,"
                f" at most {MAX_VOLUMES} are supported"
            )
        if vm is None:
            vm = self.host.vms[spec.vm_id] = FakeVM(spec, observed)
        else:
            vm.spec, vm.observed, vm.shutdown_pending = spec, observed, False
            vm.power_off_asked = False
        vm.volumes = {v.volume_id: v for v in spec.volumes}
        vm.events.append("boot")
        return observed

    async def request_shutdown(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is not None and vm.observed.power in LIVE:
            self._retry_writes(vm)  # a paused guest would never see the request
            vm.shutdown_pending = vm.power_off_asked = True

    async def force_stop(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power is PowerState.STOPPED:
            return
        if vm.observed.power in LIVE:
            vm.events.append("kill")
        vm.power_off(PowerState.STOPPED, "stopped on request")

    async def reboot(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power not in LIVE:
            raise DriverError(f"cannot reboot {vm_id}: it is not running")
        vm.shutdown_pending = vm.power_off_asked = False
        vm.events.append("reset")  # the writes that failed are dropped, and it runs
        if vm.observed.power is not PowerState.RUNNING:
            vm.observed = Observed(vm_id, PowerState.RUNNING, vm.observed.pid)

    async def resume(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power not in LIVE:
            raise DriverError(f"cannot resume {vm_id}: it is not running")
        self._retry_writes(vm)

    def _retry_writes(self, vm: FakeVM) -> None:
        """QEMU's `cont` on a VM paused by failed writes: they are tried again, and pause it
        again if their files still cannot be written."""
        if vm.observed.power is not PowerState.PAUSED:
            return
        still = tuple(e for e in vm.observed.io_errors if e.path in self.host.full_files
                      or (e.remote and e.disk in self.host.unreachable))
        vm.observed = (Observed(vm.observed.vm_id, PowerState.PAUSED, vm.observed.pid,
                                "qemu status io-error", still)
                       if still else
                       Observed(vm.observed.vm_id, PowerState.RUNNING, vm.observed.pid))

    async def destroy(self, vm_id: str) -> None:
        vm = self.host.vms.pop(vm_id, None)
        if vm is not None:
            vm.close_ports()
        self._forget_migration(vm_id)

    async def console_log(self, vm_id: str, max_bytes: int = 64 * 1024) -> str:
        vm = self.host.vms.get(vm_id)
        if vm is None:
            return ""
        text = "".join(_render(vm.spec, event) for event in vm.events)
        data = text.encode()
        return data[-max_bytes:].decode(errors="replace") if len(data) > max_bytes else text

    async def open_serial(self, vm_id: str) -> SerialPort:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power not in LIVE:
            raise DriverError(f"cannot open the serial port of {vm_id}: it is not running")
        vm.ports = [p for p in vm.ports if not p.closed]
        port = FakeSerialPort(vm.spec.hostname)
        vm.ports.append(port)
        return port

    def simulate_crash(self, vm_id: str, reason: str = "") -> None:
        """The VM's process dies without anyone asking (tests). KeyError if unknown."""
        vm = self.host.vms[vm_id]
        pid = vm.observed.pid
        vm.events.append("kill")
        vm.power_off(PowerState.CRASHED, reason or f"qemu process exited unexpectedly (pid {pid})")
        mig = self.host.migrations.get(vm_id)
        if mig is not None and mig.role == "destination":  # a dead QEMU listens no more
            self.host.fabric.close(mig.incoming)

    def simulate_guest_poweroff(self, vm_id: str) -> None:
        """The guest powers itself off, nobody asked (tests): SHUTDOWN, its process still
        there (as QEMU's `-action shutdown=pause`). KeyError if unknown."""
        vm = self.host.vms[vm_id]
        vm.events.append("poweroff")
        vm.observed = Observed(vm_id, PowerState.SHUTDOWN, vm.observed.pid)

    def simulate_io_error(self, vm_id: str, disk: str, path: str, nospace: bool = True,
                          remote: bool = False) -> None:
        """A write of the running VM to `disk` (its file `path`) fails on the host: the VM
        pauses, as a disk with the `stop` write-error policy does (tests). With `nospace`, the
        file counts as unwritable (host.full_files) until a test removes it; with `remote`
        (a network volume), the volume does (host.unreachable)."""
        vm = self.host.vms[vm_id]
        if nospace:
            self.host.full_files.add(path)
        if remote:
            self.host.unreachable.add(disk)
        errors = (*vm.observed.io_errors, DiskIoError(disk, nospace, path, remote))
        vm.observed = Observed(vm_id, PowerState.PAUSED, vm.observed.pid, "qemu status io-error",
                               errors)

    # -- block volumes ----------------------------------------------------------------------

    def _holder(self, vm_id: str, volume_id: str, action: str) -> VolumeAttachment:
        att = running(self.host, vm_id, f"{action} {volume_id}").volumes.get(volume_id)
        if att is None:
            raise DriverError(f"cannot {action} {volume_id}: it is not attached to {vm_id}")
        return att

    async def attach_volume(self, vm_id: str, att: VolumeAttachment) -> None:
        vm = running(self.host, vm_id, f"attach {att.volume_id} to {vm_id}")
        if att.volume_id in vm.volumes:
            return
        if len(vm.volumes) >= MAX_VOLUMES:
            raise DriverError(
                f"cannot attach {att.volume_id} to {vm_id}: all {MAX_VOLUMES} volume slots"
                " are in use"
            )
        if self.check_paths and att.path is not None and not att.path.is_file():
            raise DriverError(
                f"cannot attach {att.volume_id} to {vm_id}: {att.path} does not exist"
            )
        vm.volumes[att.volume_id] = att

    async def detach_volume(self, vm_id: str, volume_id: str, timeout_s: float) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or volume_id not in vm.volumes:
            return
        if volume_id in self.host.stuck_volumes:
            await asyncio.sleep(timeout_s)  # waits for the guest, like QEMU, in vain
            raise DetachTimeout(
                f"volume {volume_id} is still attached to {vm_id}: the guest did not release"
                f" the disk within {timeout_s:g}s (is it mounted or in use?)"
            )
        del vm.volumes[volume_id]

    async def resize_volume(self, vm_id: str, att: VolumeAttachment, size_bytes: int) -> None:
        att = self._holder(vm_id, att.volume_id, "resize")
        if att.path is None:  # over NBD: the storage host grows the file (its exporter)
            return
        if att.path.is_file():  # the file grows, as QEMU's block_resize does
            await qemu_img("resize", "-q", "-f", "qcow2", str(att.path), str(size_bytes))

    async def snapshot_volume(self, vm_id: str, volume_id: str, target: Path) -> None:
        att = self._holder(vm_id, volume_id, "snapshot")
        if target.exists():
            raise DriverError(f"cannot snapshot {volume_id}: {target} already exists")
        if att.path is None:
            raise DriverError(f"cannot snapshot {volume_id}: it is stored on another host")
        if att.path.is_file():
            await asyncio.to_thread(shutil.copyfile, att.path, target)
        elif self.check_paths:
            raise DriverError(f"cannot snapshot {volume_id}: {att.path} does not exist")
        else:
            target.write_bytes(b"")

    async def attached_volumes(self, vm_id: str) -> set[str]:
        vm = self.host.vms.get(vm_id)
        return set(vm.volumes) if vm is not None else set()



def _render(spec: VMSpec, event: str) -> str:
    if event == "boot" or event == "reset":
        return (
            f"[    0.000000] Linux version 6.1.0-fake ({spec.arch}) #1 SMP\n"
            f"[    0.000000] Command line: {spec.kernel_cmdline}\n"
            f"[    0.100000] smpboot: Allowing {spec.vcpus} CPUs, {spec.ram_mib} MiB RAM\n"
            f"[    1.000000] hostname: {spec.hostname}\n"
            "cumulo-tiny: ready\n"
        )
    if event == "poweroff":
        return "[   60.000000] reboot: Power down\n"
    return ""
