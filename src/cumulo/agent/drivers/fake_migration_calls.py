"""The fake driver's migration calls (the driver contract's two-host part): live moves
between fake hosts through their fabric (fake_migration), cold moves (fake_cold_move). A mixin
of FakeDriver, as qemu_migration_calls is of the QEMU driver."""

from __future__ import annotations

import time
from pathlib import Path

from cumulo.agent.drivers import fake_cold_move
from cumulo.agent.drivers.base import (
    FINISH_GIVE_UP_S,
    NOT_RESUMED,
    POWER_OFF_PENDING,
    DriverError,
    IncomingMigration,
    MigratingDriver,
    MigrationState,
    MigrationStatus,
    Observed,
    PowerState,
    VMSpec,
    check_incoming_volumes,
    check_migration_address,
)
from cumulo.agent.drivers.fake_host import LIVE, FakeHost, FakeVM, running
from cumulo.agent.drivers.fake_migration import FakeMigration, copy_disk

_ENDED_MIGRATION = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


class FakeMigrationCalls(MigratingDriver):
    host: FakeHost
    check_paths: bool
    finish_give_up_s: float = FINISH_GIVE_UP_S

    async def prepare_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        check_migration_address(address)
        mig = self.host.migrations.get(spec.vm_id)
        vm = self.host.vms.get(spec.vm_id)
        if vm is not None and vm.observed.power in LIVE:
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
        vm = self.host.vms[spec.vm_id] = FakeVM(spec, Observed(
            spec.vm_id, PowerState.PAUSED, next(self.host.pids), "qemu status inmigrate"))
        vm.volumes = {v.volume_id: v for v in spec.volumes}  # opened by the incoming QEMU
        return incoming

    async def migrate_out(self, vm_id: str, incoming: IncomingMigration) -> None:
        vm = running(self.host, vm_id, f"migrate {vm_id}")  # it runs on while the copy goes
        mig = self.host.migrations.get(vm_id)
        if mig is not None and mig.role == "destination":
            raise DriverError(f"cannot migrate {vm_id}: it is still arriving on this host")
        if mig is not None and mig.state not in _ENDED_MIGRATION:
            return  # already under way
        if vm.power_off_asked:
            raise DriverError(POWER_OFF_PENDING.format(vm_id=vm_id))
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
        return vm is not None and vm.observed.power in LIVE

    async def migration_status(self, vm_id: str) -> MigrationStatus | None:
        mig = self.host.migrations.get(vm_id)
        if mig is None:
            return None
        if mig.cold:
            return fake_cold_move.status(self.host, vm_id, mig)
        if mig.role == "destination":
            vm = self.host.vms.get(vm_id)
            if mig.state is MigrationState.INCOMING and (vm is None or vm.observed.power
                                                         not in LIVE):
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
            if dest_vm is None or dest_vm.observed.power not in LIVE:
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
            if vm is not None and vm.observed.power not in LIVE:  # died since: a crash here
                mig.state = MigrationState.COMPLETED  # the source said so: its disk is kept
                self._forget_migration(vm_id)
                return
            if mig.state is not MigrationState.COMPLETED or vm is None:
                raise DriverError(f"cannot finish the arrival of {vm_id}: it has not arrived")
            if vm_id in self.host.unresumable:
                self._not_resumed(vm, mig, DriverError(f"QMP cont on {vm_id} failed: refused"))
                self._forget_migration(vm_id)
                return
            if vm.observed.power is not PowerState.SHUTDOWN:  # arrived powered off: stays so
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
        vm = running(self.host, vm_id, f"announce {vm_id}")
        vm.events.append("announce")

    def _destination(self, incoming: IncomingMigration) -> FakeHost | None:
        dest = self.host.fabric.listeners.get((incoming.host, incoming.migration_port))
        return dest if isinstance(dest, FakeHost) else None

    def _hand_over(self, vm_id: str, dest: FakeHost, dest_vm: FakeVM) -> None:
        """The switch-over: the destination holds the disk, the console history and the
        volumes; the source is left paused (QEMU's postmigrate) until finish."""
        src_vm = self.host.vms[vm_id]
        copy_disk(src_vm.spec.boot_disk, dest_vm.spec.boot_disk, self.check_paths)
        dest_vm.events = list(src_vm.events)
        _arrive_as(dest_vm)
        dest.migrations[vm_id].state = MigrationState.COMPLETED
        dest.fabric.listeners.pop((dest.migrations[vm_id].incoming.host,
                                   dest.migrations[vm_id].incoming.migration_port), None)
        src_vm.observed = Observed(vm_id, PowerState.PAUSED, src_vm.observed.pid,
                                   "qemu status postmigrate")

    def _check_arrival(self, mig: FakeMigration, vm: FakeVM | None) -> None:
        """A destination whose source, in another process, has handed the VM over."""
        if mig.state is MigrationState.INCOMING and vm is not None and vm.observed.power in \
                LIVE and (events := self.host.fabric.arrived(mig.incoming)) is not None:
            vm.events, mig.state = events, MigrationState.COMPLETED
            _arrive_as(vm)
            self.host.fabric.close(mig.incoming)

    def _hand_over_remote(self, vm_id: str, incoming: IncomingMigration, disk: Path) -> None:
        """The switch-over to a destination in another process (see FakeFabric)."""
        src_vm = self.host.vms[vm_id]
        copy_disk(src_vm.spec.boot_disk, disk, self.check_paths)
        self.host.fabric.hand_over(incoming, list(src_vm.events))
        src_vm.observed = Observed(vm_id, PowerState.PAUSED, src_vm.observed.pid,
                                   "qemu status postmigrate")

    def _not_resumed(self, vm: FakeVM, mig: FakeMigration, exc: DriverError) -> None:
        """As the QEMU driver's: raised again until it has failed for finish_give_up_s, then
        the arrived VM is killed as a crash, with the reason."""
        now = time.time()
        if mig.finish_failing_since is None:
            mig.finish_failing_since = now
        if now - mig.finish_failing_since < self.finish_give_up_s:
            raise exc
        vm.events.append("kill")
        vm.power_off(PowerState.CRASHED, NOT_RESUMED.format(seconds=self.finish_give_up_s,
                                                            error=exc))

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


def _arrive_as(vm: FakeVM) -> None:
    """The source's runstate comes over with the memory (as QEMU's): a guest that had
    powered off during the copy (its console's last event) arrives powered off."""
    if vm.events[-1:] == ["poweroff"]:
        vm.observed = Observed(vm.observed.vm_id, PowerState.SHUTDOWN, vm.observed.pid)
