"""The QemuDriver's live-migration calls (the QEMU side of it is in qemu_migration).

A mixin of QemuDriver: it uses the driver's per-VM paths, locks, launch and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from pathlib import Path

from cumulo.agent.drivers import qemu_migration, qemu_pinning, qemu_process
from cumulo.agent.drivers.base import (
    FINISH_GIVE_UP_S,
    NOT_RESUMED,
    POWER_OFF_PENDING,
    DriverError,
    IncomingMigration,
    MigrationProgress,
    MigrationState,
    MigrationStatus,
    VMSpec,
    check_incoming_volumes,
    check_migration_address,
    check_spec_files,
)
from cumulo.agent.drivers.qemu_argv import Accel, VMPaths
from cumulo.agent.drivers.qemu_cold_move import QemuColdMove
from cumulo.agent.drivers.qemu_migration import Outgoing, Record
from cumulo.agent.drivers.qmp import QMPSession, close_session, session_for
from cumulo.domain.arch import Arch


class QemuMigration(QemuColdMove):
    """prepare_incoming, migrate_out, migration_status, cancel_migration, finish_migration
    (a cold move's branches are QemuColdMove's)."""

    _outgoing: dict[str, Outgoing]
    tb_size_mib: int
    finish_give_up_s: float = FINISH_GIVE_UP_S

    # provided by QemuDriver (_paths and _lock too: see QemuColdMove)
    def _forget_status(self, vm_id: str) -> None:
        raise NotImplementedError

    async def _force_stop(self, paths: VMPaths) -> None:
        raise NotImplementedError

    async def _start_qemu(self, spec: VMSpec, paths: VMPaths, accel: Accel,
                          extra: tuple[str, ...] = ()) -> int:
        raise NotImplementedError

    def _forget_vm(self, paths: VMPaths) -> None:
        raise NotImplementedError

    async def accel_for(self, arch: Arch) -> Accel:
        raise NotImplementedError

    # -- live migration (see qemu_migration) -------------------------------------------------

    async def prepare_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        check_migration_address(address)
        paths = self._paths(spec.vm_id)
        async with self._lock(spec.vm_id):
            record = Record.load(paths.migration_json)
            if qemu_process.live_pid(paths) is not None:
                if record is None or record.role != "destination":
                    raise DriverError(f"cannot receive {spec.vm_id}: it already runs on this "
                                      "host")
                if record.incoming:
                    return IncomingMigration(**record.incoming)
                # An agent died (kill -9) between launching the incoming QEMU and saving what
                # it serves: nothing says which of serve_incoming's steps it did. Made again
                # from scratch (the record was a TypeError here, which killed every agent
                # restarted after it at its first pass: the host's volumes and instances
                # stalled with it until the migration timed out).
                await self._remove_incoming(paths, record)
                record = None
            check_incoming_volumes(spec)  # their keys: written at launch (_hand_over)
            if spec.boot_disk.exists() and (record is None or record.role != "destination"):
                raise DriverError(
                    f"cannot receive {spec.vm_id}: its boot disk {spec.boot_disk} already exists"
                )
            if disk_bytes <= 0:
                raise DriverError(f"cannot receive {spec.vm_id}: disk size {disk_bytes} <= 0")
            await qemu_process.qemu_img(
                "create", "-q", "-f", "qcow2", str(spec.boot_disk), str(disk_bytes)
            )
            record = Record("destination", {}, str(MigrationState.INCOMING),
                            disk_created=str(spec.boot_disk))
            try:
                check_spec_files(spec)
                if spec.netns is not None:
                    qemu_process.check_netns(spec)
                accel = await self.accel_for(spec.arch)
                paths.dir.mkdir(parents=True, exist_ok=True)
                record.save(paths.migration_json)
                # -S: the guest never runs here before finish_migration says so (no split brain)
                await self._start_qemu(spec, paths, accel, ("-S", "-incoming", "defer"))
                if spec.cpu_set:  # pinned here before it runs here (a dedicated host's CPUs)
                    await qemu_pinning.pin_vcpus(paths.qmp_sock, spec.cpu_set, spec.vcpus,
                                                 qemu_migration.CMD_TIMEOUT_S * 5)
                incoming = await qemu_migration.serve_incoming(
                    session_for(paths.qmp_sock), spec.vm_id, address
                )
            except BaseException:
                await self._remove_incoming(paths, record)
                raise
            record.incoming = dataclasses.asdict(incoming)
            record.save(paths.migration_json)
            return incoming

    async def migrate_out(self, vm_id: str, incoming: IncomingMigration) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot migrate {vm_id}: it is not running")
            record = Record.load(paths.migration_json)
            if record is not None and record.role == "destination":
                raise DriverError(f"cannot migrate {vm_id}: it is still arriving on this host")
            if record is not None and MigrationState(record.state) not in _ENDED:
                return  # already under way
            if paths.stop_marker.exists():  # a power-off asked of this process's guest
                raise DriverError(POWER_OFF_PENDING.format(vm_id=vm_id))
            record = Record("source", dataclasses.asdict(incoming),
                            str(MigrationState.COPYING_DISKS))
            record.save(paths.migration_json)
            out = self._outgoing[vm_id] = Outgoing(
                session_for(paths.qmp_sock), paths.migration_json, record, vm_id
            )
            out.start()

    async def migration_status(self, vm_id: str) -> MigrationStatus | None:
        paths = self._paths(vm_id)
        record = Record.load(paths.migration_json)
        if record is None:
            return None
        if record.cold:
            return self._cold_status(vm_id, record)
        state = MigrationState(record.state)
        alive = qemu_process.live_pid(paths) is not None
        qmp = session_for(paths.qmp_sock)
        if record.role == "destination":
            if state is MigrationState.INCOMING:
                if not alive:
                    record.state = str(MigrationState.FAILED)
                    record.reason = "the incoming QEMU is gone: " + qemu_process.crash_reason(
                        paths)
                elif await _incoming_state(qmp) == "completed":
                    record.state = str(MigrationState.COMPLETED)
            return record.status(vm_id, MigrationProgress())
        if state in _ENDED or not alive:
            if not alive and state not in _ENDED:
                record.state, record.reason = str(MigrationState.FAILED), "the source QEMU is gone"
            return record.status(vm_id, MigrationProgress())
        return record.status(vm_id, await qemu_migration.source_progress(qmp, record))

    async def cancel_migration(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            record = Record.load(paths.migration_json)
            if record is None:
                return
            if record.cold:
                await self._cold_cancel(paths, record)
                return
            if record.role == "destination":
                if (qemu_process.live_pid(paths) is not None
                        and await _incoming_state(session_for(paths.qmp_sock)) == "completed"):
                    raise DriverError(f"cannot cancel the arrival of {vm_id}: it has completed")
                await self._remove_incoming(paths, record)
                return
            out = self._outgoing.get(vm_id) or Outgoing(
                session_for(paths.qmp_sock), paths.migration_json, record, vm_id
            )
            if qemu_process.live_pid(paths) is None:
                return
            await out.cancel()

    async def finish_migration(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            record = Record.load(paths.migration_json)
            if record is None:
                return  # finished already
            if record.cold and record.role == "destination":
                await self._cold_arrived(paths, record)
                return
            if record.role == "destination":
                qmp = session_for(paths.qmp_sock)
                if qemu_process.live_pid(paths) is None:
                    # Its QEMU died after the switch-over (finish is asked only once the
                    # source completed). The disk is all here (the mirror flushed it before
                    # the source let the memory go); the guest's memory died with it. The
                    # move ends as a crash here, reported as any (error, "exited"), never a
                    # finish that fails for ever.
                    await close_session(paths.qmp_sock)
                    paths.migration_json.unlink(missing_ok=True)
                    self._forget_status(vm_id)
                    return
                try:
                    if await _incoming_state(qmp) != "completed":
                        raise DriverError(f"cannot finish the arrival of {vm_id}: it has not "
                                          "arrived")
                    await qemu_migration.resume_incoming(qmp)
                except DriverError as exc:
                    await self._not_resumed(paths, record, exc)  # raises until it gives up
                paths.migration_json.unlink(missing_ok=True)
                self._forget_status(vm_id)
                return
            if MigrationState(record.state) is not MigrationState.COMPLETED:
                raise DriverError(f"cannot finish the migration of {vm_id}: it is {record.state}")
            boot_disk = Path(record.source_disk) if record.source_disk else _boot_disk_of(paths)
            await self._force_stop(paths)
            self._forget_vm(paths)
            await asyncio.to_thread(shutil.rmtree, paths.dir, True)
            await close_session(paths.qmp_sock)
            if boot_disk is not None:
                boot_disk.unlink(missing_ok=True)
        self._outgoing.pop(vm_id, None)

    async def announce_self(self, vm_id: str) -> None:
        """QEMU's announce-self: gratuitous RARPs from every NIC, ANNOUNCE_ROUNDS of them
        over about a second (QEMU sends a few by itself at the switch-over, but then this
        host's bridge may not hold the VM's taps yet)."""
        paths = self._paths(vm_id)
        if qemu_process.live_pid(paths) is None:
            raise DriverError(f"cannot announce {vm_id}: it is not running")
        await session_for(paths.qmp_sock).execute("announce-self", {
            "initial": 50, "max": 550, "rounds": ANNOUNCE_ROUNDS, "step": 100,
        }, timeout=qemu_migration.CMD_TIMEOUT_S)  # fmt: skip

    async def _not_resumed(self, paths: VMPaths, record: Record, exc: DriverError) -> None:
        """A resume that failed: said again (finish is asked at each pass) until it has
        failed for finish_give_up_s (counted in migration.json: across agent restarts); then
        its QEMU is killed as a crash with the reason, and the arrival ends (base.NOT_RESUMED)."""
        now = time.time()
        if record.finish_failing_since is None:
            record.finish_failing_since = now
            record.save(paths.migration_json)
        if now - record.finish_failing_since < self.finish_give_up_s:
            raise exc
        paths.exit_reason.write_text(NOT_RESUMED.format(seconds=self.finish_give_up_s,
                                                        error=exc) + "\n")
        if (pid := qemu_process.live_pid(paths)) is not None:  # no stop marker: a crash
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not await qemu_process.wait_gone(paths, pid, 10.0):
                raise DriverError(f"qemu (pid {pid}) of {paths.vm_id} survived SIGKILL")
        await close_session(paths.qmp_sock)

    async def _remove_incoming(self, paths: VMPaths, record: Record) -> None:
        await self._force_stop(paths)
        self._forget_vm(paths)
        await asyncio.to_thread(shutil.rmtree, paths.dir, True)
        await close_session(paths.qmp_sock)
        if record.disk_created:
            Path(record.disk_created).unlink(missing_ok=True)


ANNOUNCE_ROUNDS = 5
_ENDED = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


async def _incoming_state(qmp: QMPSession) -> str:
    try:
        return await qemu_migration.incoming_state(qmp)
    except DriverError:
        return "unknown"


def _boot_disk_of(paths: VMPaths) -> Path | None:
    try:
        return Path(json.loads(paths.spec_json.read_text())["boot_disk"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
