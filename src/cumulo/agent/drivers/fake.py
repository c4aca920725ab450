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
import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cumulo.agent.drivers import fake_cold_move
from cumulo.agent.drivers.base import (
    MAX_VOLUMES,
    DetachTimeout,
    DriverError,
    IncomingMigration,
    MigratingDriver,
    MigrationState,
    MigrationStatus,
    Observed,
    PowerState,
    VMSpec,
    VolumeAttachment,
    check_incoming_volumes,
    check_migration_address,
    check_spec_files,
)
from cumulo.agent.drivers.fake_migration import FakeFabric, FakeMigration, copy_disk
from cumulo.agent.drivers.fake_serial import FakeSerialPort
from cumulo.agent.drivers.qemu_process import qemu_img
from cumulo.agent.drivers.serial import SerialPort
from cumulo.domain.disk_errors import DiskIoError

_LIVE = (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN)
_ENDED_MIGRATION = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


class _FakeVM:
    __slots__ = ("events", "observed", "ports", "shutdown_pending", "spec", "volumes")

    def __init__(self, spec: VMSpec, observed: Observed) -> None:
        self.spec = spec
        self.observed = observed
        self.shutdown_pending = False
        self.events: list[str] = []  # "boot", "reset", "poweroff", "kill": console is rendered
        self.volumes: dict[str, VolumeAttachment] = {}  # held by the running process
        self.ports: list[FakeSerialPort] = []  # open serial connections (end with the process)

    def power_off(self, power: PowerState, reason: str) -> None:
        self.shutdown_pending = False
        self.volumes.clear()  # the process is gone, and its disks with it
        self.close_ports()
        self.observed = Observed(self.observed.vm_id, power, None, reason)

    def close_ports(self) -> None:
        for port in self.ports:
            port.vanish()
        self.ports.clear()


@dataclass
class FakeHost:
    """The simulated hypervisor: outlives any FakeDriver that is attached to it."""

    vms: dict[str, _FakeVM] = field(default_factory=dict)
    pids: itertools.count[int] = field(default_factory=lambda: itertools.count(10_000))
    # Volume ids whose guest never releases the disk on hot-unplug (tests of the timeout).
    stuck_volumes: set[str] = field(default_factory=set)
    # Host files that cannot be written now (a full disk: see simulate_io_error).
    full_files: set[str] = field(default_factory=set)
    # Network volumes whose storage host does not answer now (see simulate_io_error).
    unreachable: set[str] = field(default_factory=set)
    # The network to other fake hosts (shared by hosts that migrate VMs between them).
    fabric: FakeFabric = field(default_factory=FakeFabric)
    migrations: dict[str, FakeMigration] = field(default_factory=dict)
    # VM ids whose guest dirties memory faster than the link carries it: their outgoing
    # migration copies memory pass after pass and never switches over.
    hot_memory: set[str] = field(default_factory=set)
    # VM ids whose cold move's copy arrives with one byte changed (see fake_cold_move).
    corrupt_copies: set[str] = field(default_factory=set)


class FakeDriver(MigratingDriver):
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
                    vm.observed = Observed(vm_id, PowerState.SHUTDOWN, vm.observed.pid)
            result[vm_id] = vm.observed
        return result

    async def start(self, spec: VMSpec) -> Observed:
        vm = self.host.vms.get(spec.vm_id)
        if vm is not None and vm.observed.power in _LIVE:
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
            vm = self.host.vms[spec.vm_id] = _FakeVM(spec, observed)
        else:
            vm.spec, vm.observed, vm.shutdown_pending = spec, observed, False
        vm.volumes = {v.volume_id: v for v in spec.volumes}
        vm.events.append("boot")
        return observed

    async def request_shutdown(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is not None and vm.observed.power in _LIVE:
            self._retry_writes(vm)  # a paused guest would never see the request
            vm.shutdown_pending = True

    async def force_stop(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power is PowerState.STOPPED:
            return
        if vm.observed.power in _LIVE:
            vm.events.append("kill")
        vm.power_off(PowerState.STOPPED, "stopped on request")

    async def reboot(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power not in _LIVE:
            raise DriverError(f"cannot reboot {vm_id}: it is not running")
        vm.shutdown_pending = False
        vm.events.append("reset")  # the writes that failed are dropped, and it runs
        if vm.observed.power is not PowerState.RUNNING:
            vm.observed = Observed(vm_id, PowerState.RUNNING, vm.observed.pid)

    async def resume(self, vm_id: str) -> None:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power not in _LIVE:
            raise DriverError(f"cannot resume {vm_id}: it is not running")
        self._retry_writes(vm)

    def _retry_writes(self, vm: _FakeVM) -> None:
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
        if vm is None or vm.observed.power not in _LIVE:
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

    # -- live migration (see fake_migration) -------------------------------------------------

    async def prepare_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        check_migration_address(address)
        mig = self.host.migrations.get(spec.vm_id)
        vm = self.host.vms.get(spec.vm_id)
        if vm is not None and vm.observed.power in _LIVE:
            if mig is not None and mig.role == "destination":
                return mig.incoming
            raise DriverError(f"cannot receive {spec.vm_id}: it already runs on this host")
        check_incoming_volumes(spec)
        if self.check_paths and spec.boot_disk.exists():
            raise DriverError(
                f"cannot receive {spec.vm_id}: its boot disk {spec.boot_disk} already exists"
            )
        if disk_bytes <= 0:
            raise DriverError(f"cannot receive {spec.vm_id}: disk size {disk_bytes} <= 0")
        if self.check_paths:
            spec.boot_disk.write_bytes(b"")
        port = next(self.host.fabric.ports)
        incoming = IncomingMigration(spec.vm_id, address, port, "root", port)
        self.host.fabric.listeners[(address, port)] = self.host
        self.host.fabric.listen(incoming, spec.boot_disk, disk_bytes)
        self.host.migrations[spec.vm_id] = FakeMigration(
            "destination", incoming, MigrationState.INCOMING, disk_bytes,
            disk_created=spec.boot_disk if self.check_paths else None,
        )  # fmt: skip
        vm = self.host.vms[spec.vm_id] = _FakeVM(spec, Observed(
            spec.vm_id, PowerState.PAUSED, next(self.host.pids), "qemu status inmigrate"))
        vm.volumes = {v.volume_id: v for v in spec.volumes}  # opened by the incoming QEMU
        return incoming

    async def migrate_out(self, vm_id: str, incoming: IncomingMigration) -> None:
        self._running(vm_id, f"migrate {vm_id}")  # and it runs on while the copy goes
        mig = self.host.migrations.get(vm_id)
        if mig is not None and mig.role == "destination":
            raise DriverError(f"cannot migrate {vm_id}: it is still arriving on this host")
        if mig is not None and mig.state not in _ENDED_MIGRATION:
            return  # already under way
        dest = self._destination(incoming)
        arriving = dest.migrations.get(vm_id) if dest is not None else None
        remote = self.host.fabric.remote(incoming) if dest is None else None
        disk = arriving.disk_bytes if arriving is not None else \
            remote.disk_bytes if remote is not None else 0
        self.host.migrations[vm_id] = FakeMigration(
            "source", incoming, MigrationState.COPYING_DISKS, disk,
            converges=vm_id not in self.host.hot_memory)

    async def prepare_cold_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        return fake_cold_move.prepare(self.host, spec, address, disk_bytes, self.check_paths,
                                      self._live(spec.vm_id))

    async def copy_cold_out(self, spec: VMSpec, incoming: IncomingMigration) -> None:
        fake_cold_move.copy_out(self.host, spec, incoming, self._live(spec.vm_id))

    async def cold_copy_checksum(self, vm_id: str) -> str:
        return fake_cold_move.checksum(self.host, vm_id)

    def _live(self, vm_id: str) -> bool:
        vm = self.host.vms.get(vm_id)
        return vm is not None and vm.observed.power in _LIVE

    async def migration_status(self, vm_id: str) -> MigrationStatus | None:
        mig = self.host.migrations.get(vm_id)
        if mig is None:
            return None
        if mig.cold:
            return fake_cold_move.status(self.host, vm_id, mig)
        if mig.role == "destination":
            vm = self.host.vms.get(vm_id)
            if mig.state is MigrationState.INCOMING and (vm is None or vm.observed.power
                                                         not in _LIVE):
                mig.state, mig.reason = MigrationState.FAILED, "the incoming QEMU is gone"
            self._check_arrival(mig, vm)
            return mig.status(vm_id)
        if mig.state not in _ENDED_MIGRATION and \
                (remote := self.host.fabric.remote(mig.incoming)) is not None and \
                self._destination(mig.incoming) is None:
            mig.advance()
            if mig.state is MigrationState.COMPLETED:
                self._hand_over_remote(vm_id, mig.incoming, remote.boot_disk)
        elif mig.state not in _ENDED_MIGRATION:
            dest = self._destination(mig.incoming)
            dest_vm = dest.vms.get(vm_id) if dest is not None else None
            if dest_vm is None or dest_vm.observed.power not in _LIVE:
                mig.state = MigrationState.FAILED
                mig.reason = "the disk copy failed: the destination closed the connection"
            else:
                mig.advance()
                if mig.state is MigrationState.COMPLETED and dest is not None:
                    self._hand_over(vm_id, dest, dest_vm)
        return mig.status(vm_id)

    async def cancel_migration(self, vm_id: str) -> None:
        mig = self.host.migrations.get(vm_id)
        if mig is None:
            return
        if mig.cold:
            return fake_cold_move.cancel(self.host, vm_id, mig)
        if mig.role == "destination":
            if mig.state is MigrationState.COMPLETED:
                raise DriverError(f"cannot cancel the arrival of {vm_id}: it has completed")
            self.host.vms.pop(vm_id, None)
            self._forget_migration(vm_id)
            return
        if mig.state is MigrationState.COMPLETED:
            raise DriverError(f"cannot cancel the migration of {vm_id}: it has completed")
        if mig.state not in _ENDED_MIGRATION:
            mig.state, mig.reason = MigrationState.CANCELLED, "cancelled on request"

    async def finish_migration(self, vm_id: str) -> None:
        mig = self.host.migrations.get(vm_id)
        if mig is None:
            return
        if mig.cold:
            return fake_cold_move.finish(self.host, vm_id, mig)
        vm = self.host.vms.get(vm_id)
        if mig.role == "destination":
            self._check_arrival(mig, vm)
            if mig.state is not MigrationState.COMPLETED or vm is None:
                raise DriverError(f"cannot finish the arrival of {vm_id}: it has not arrived")
            vm.observed = Observed(vm_id, PowerState.RUNNING, vm.observed.pid)
            self._forget_migration(vm_id)
            return
        if mig.state is not MigrationState.COMPLETED:
            raise DriverError(f"cannot finish the migration of {vm_id}: it is {mig.state}")
        self.host.vms.pop(vm_id, None)
        self._forget_migration(vm_id)
        if vm is not None and self.check_paths:
            vm.spec.boot_disk.unlink(missing_ok=True)

    async def announce_self(self, vm_id: str) -> None:
        vm = self._running(vm_id, f"announce {vm_id}")
        vm.events.append("announce")

    def _destination(self, incoming: IncomingMigration) -> FakeHost | None:
        dest = self.host.fabric.listeners.get((incoming.host, incoming.migration_port))
        return dest if isinstance(dest, FakeHost) else None

    def _hand_over(self, vm_id: str, dest: FakeHost, dest_vm: _FakeVM) -> None:
        """The switch-over: the destination holds the disk, the console history and the
        volumes; the source is left paused (QEMU's postmigrate) until finish."""
        src_vm = self.host.vms[vm_id]
        copy_disk(src_vm.spec.boot_disk, dest_vm.spec.boot_disk, self.check_paths)
        dest_vm.events = list(src_vm.events)
        dest.migrations[vm_id].state = MigrationState.COMPLETED
        dest.fabric.listeners.pop((dest.migrations[vm_id].incoming.host,
                                   dest.migrations[vm_id].incoming.migration_port), None)
        src_vm.observed = Observed(vm_id, PowerState.PAUSED, src_vm.observed.pid,
                                   "qemu status postmigrate")

    def _check_arrival(self, mig: FakeMigration, vm: _FakeVM | None) -> None:
        """A destination whose source, in another process, has handed the VM over."""
        if mig.state is MigrationState.INCOMING and vm is not None and vm.observed.power in \
                _LIVE and (events := self.host.fabric.arrived(mig.incoming)) is not None:
            vm.events, mig.state = events, MigrationState.COMPLETED
            self.host.fabric.close(mig.incoming)

    def _hand_over_remote(self, vm_id: str, incoming: IncomingMigration, disk: Path) -> None:
        """The switch-over to a destination in another process (see FakeFabric)."""
        src_vm = self.host.vms[vm_id]
        copy_disk(src_vm.spec.boot_disk, disk, self.check_paths)
        self.host.fabric.hand_over(incoming, list(src_vm.events))
        src_vm.observed = Observed(vm_id, PowerState.PAUSED, src_vm.observed.pid,
                                   "qemu status postmigrate")

    def _forget_migration(self, vm_id: str) -> None:
        cold = self.host.migrations.get(vm_id)
        if cold is not None and cold.cold:
            return fake_cold_move.forget(self.host, vm_id, remove_disk=True)
        mig = self.host.migrations.pop(vm_id, None)
        if mig is None or mig.role != "destination":
            return
        self.host.fabric.listeners.pop((mig.incoming.host, mig.incoming.migration_port), None)
        self.host.fabric.close(mig.incoming)
        if mig.state is not MigrationState.COMPLETED and mig.disk_created is not None:
            mig.disk_created.unlink(missing_ok=True)

    # -- block volumes ----------------------------------------------------------------------

    def _running(self, vm_id: str, action: str) -> _FakeVM:
        vm = self.host.vms.get(vm_id)
        if vm is None or vm.observed.power not in _LIVE:
            raise DriverError(f"cannot {action}: {vm_id} is not running")
        return vm

    def _holder(self, vm_id: str, volume_id: str, action: str) -> VolumeAttachment:
        att = self._running(vm_id, f"{action} {volume_id}").volumes.get(volume_id)
        if att is None:
            raise DriverError(f"cannot {action} {volume_id}: it is not attached to {vm_id}")
        return att

    async def attach_volume(self, vm_id: str, att: VolumeAttachment) -> None:
        vm = self._running(vm_id, f"attach {att.volume_id} to {vm_id}")
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
