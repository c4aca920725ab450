"""Cold moves on QEMU: a stopped VM's boot disk copied to another host; nothing runs.

- destination: an empty qcow2 of the source's virtual size, exported writable over NBD on
  its underlay address by a qemu-storage-daemon (in the host's network namespace, as its
  QEMUs are); no QEMU of the VM.
- source: `qemu-img convert -n --target-is-zero` of its disk (its whole backing chain: the
  copy stands alone) into that export; then the digest of its own disk (disk_digest).
- the destination, asked for its digest, stops serving first (nothing writes any more),
  then digests what arrived; the caller compares the two before the instance changes host.
The source disk is only ever read: a failure or a cancel leaves it as it was, and the
destination's cancel removes its daemon, disk and record.

The record is the live migration's (`migration.json`, `cold` set), so a restarted agent
still knows the daemon to stop and the disk to remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import time
from pathlib import Path

from cumulo.agent.drivers import disk_digest, qemu_process
from cumulo.agent.drivers.base import (
    DriverError,
    IncomingMigration,
    MigrationProgress,
    MigrationState,
    MigrationStatus,
    VMSpec,
    check_migration_address,
)
from cumulo.agent.drivers.qemu_argv import VMPaths
from cumulo.agent.drivers.qemu_migration import EXPORT, NBD_PORTS, Record

NBD_PIDFILE = "cold-nbd.pid"
STOP_GRACE_S = 5.0


class QemuColdMove:
    """prepare_cold_incoming, copy_cold_out, cold_copy_checksum, and the cold branches of
    the migration calls (a mixin of QemuDriver)."""

    _cold_copies: dict[str, asyncio.Task[None]]

    # provided by QemuDriver
    def _paths(self, vm_id: str) -> VMPaths:
        raise NotImplementedError

    def _lock(self, vm_id: str) -> asyncio.Lock:
        raise NotImplementedError

    async def prepare_cold_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        check_migration_address(address)
        paths = self._paths(spec.vm_id)
        async with self._lock(spec.vm_id):
            record = Record.load(paths.migration_json)
            if record is not None and record.cold and record.role == "destination" \
                    and record.incoming:
                return IncomingMigration(**record.incoming)
            if qemu_process.live_pid(paths) is not None:
                raise DriverError(f"cannot receive {spec.vm_id}: it already runs on this host")
            if spec.boot_disk.exists():
                raise DriverError(
                    f"cannot receive {spec.vm_id}: its boot disk {spec.boot_disk} already exists")
            if disk_bytes <= 0:
                raise DriverError(f"cannot receive {spec.vm_id}: disk size {disk_bytes} <= 0")
            if spec.netns is not None:
                qemu_process.check_netns(spec)
            paths.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
            record = Record("destination", {}, str(MigrationState.INCOMING),
                            disk_created=str(spec.boot_disk), disk_bytes=disk_bytes, cold=True)
            record.save(paths.migration_json)
            try:
                await qemu_process.qemu_img(
                    "create", "-q", "-f", "qcow2", str(spec.boot_disk), str(disk_bytes))
                port, record.helper_pid = await _serve(spec, address, paths.dir / NBD_PIDFILE)
            except BaseException:
                await remove_cold_incoming(paths, record)
                raise
            incoming = IncomingMigration(spec.vm_id, address, port, EXPORT, 0)
            record.incoming = dataclasses.asdict(incoming)
            record.save(paths.migration_json)
            return incoming

    async def copy_cold_out(self, spec: VMSpec, incoming: IncomingMigration) -> None:
        paths = self._paths(spec.vm_id)
        async with self._lock(spec.vm_id):
            if qemu_process.live_pid(paths) is not None:
                raise DriverError(f"cannot copy {spec.vm_id} cold: it is running")
            if not spec.boot_disk.is_file():
                raise DriverError(f"cannot copy {spec.vm_id}: no boot disk {spec.boot_disk}")
            record = Record.load(paths.migration_json)
            if record is not None and record.role == "destination":
                raise DriverError(f"cannot copy {spec.vm_id}: it is still arriving on this host")
            if record is not None and MigrationState(record.state) not in _ENDED:
                return  # already under way
            if spec.netns is not None:
                qemu_process.check_netns(spec)
            paths.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
            record = Record("source", dataclasses.asdict(incoming),
                            str(MigrationState.COPYING_DISKS), cold=True,
                            source_disk=str(spec.boot_disk),
                            disk_bytes=await disk_digest.virtual_size(spec.boot_disk))
            record.save(paths.migration_json)
            self._cold_copies[spec.vm_id] = asyncio.create_task(
                _copy(paths, record, spec, incoming), name=f"cold-copy-{spec.vm_id}")

    async def cold_copy_checksum(self, vm_id: str) -> str:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            record = Record.load(paths.migration_json)
            if record is None or not record.cold or record.role != "destination" \
                    or not record.disk_created:
                raise DriverError(f"no cold move of {vm_id} arrives on this host")
            if not record.checksum:
                await _stop_helper(record, "qemu-storage-daemon")
                record.checksum = await disk_digest.content_digest(Path(record.disk_created))
                record.state = str(MigrationState.COMPLETED)
                record.save(paths.migration_json)
            return record.checksum

    # -- the cold branches of migration_status / cancel_migration / finish_migration ----------

    def _cold_status(self, vm_id: str, record: Record) -> MigrationStatus:
        state = MigrationState(record.state)
        if record.role == "source" and state is MigrationState.COPYING_DISKS \
                and vm_id not in self._cold_copies and not _is(record.helper_pid, "qemu-img"):
            record.state = str(MigrationState.FAILED)
            record.reason = "the disk copy ended with the agent that started it"
        elif record.role == "destination" and state is MigrationState.INCOMING \
                and not _is(record.helper_pid, "qemu-storage-daemon"):
            record.state = str(MigrationState.FAILED)
            record.reason = "the destination's disk export (qemu-storage-daemon) is gone"
        done = record.disk_bytes if record.state == MigrationState.COMPLETED else 0
        return record.status(vm_id, MigrationProgress(disk_bytes_copied=done,
                                                      disk_bytes_total=record.disk_bytes))

    async def _cold_cancel(self, paths: VMPaths, record: Record) -> None:
        if record.role == "destination":
            await remove_cold_incoming(paths, record)
            return
        task = self._cold_copies.pop(paths.vm_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        record = Record.load(paths.migration_json) or record
        if MigrationState(record.state) is MigrationState.COMPLETED:
            return  # nothing to undo: the source disk was only read
        await _stop_helper(record, "qemu-img")
        if MigrationState(record.state) not in _ENDED:
            record.state, record.reason = str(MigrationState.CANCELLED), "cancelled on request"
            record.save(paths.migration_json)

    async def _cold_arrived(self, paths: VMPaths, record: Record) -> None:
        """Destination, once checked: the disk is the instance's now; the record goes."""
        if MigrationState(record.state) is not MigrationState.COMPLETED:
            raise DriverError(f"cannot finish the arrival of {paths.vm_id}: not checked yet")
        await asyncio.to_thread(shutil.rmtree, paths.dir, True)


_ENDED = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


def _in_netns(spec: VMSpec, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", spec.netns, *argv] if spec.netns else argv


def _opt(value: object) -> str:
    """A value inside QEMU's key=value,... syntax (a comma is doubled)."""
    return str(value).replace(",", ",,")


async def _serve(spec: VMSpec, address: str, pidfile: Path) -> tuple[int, int]:
    """A qemu-storage-daemon exporting the disk on `address`: (its port, its pid)."""
    last = ""
    for port in random.sample(range(*NBD_PORTS), 8):
        pidfile.unlink(missing_ok=True)
        argv = _in_netns(spec, [
            "qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file,filename={_opt(spec.boot_disk)}",
            "--blockdev", "driver=qcow2,node-name=disk,file=file",
            "--nbd-server", f"addr.type=inet,addr.host={_opt(address)},addr.port={port}",
            "--export", f"type=nbd,id={EXPORT},node-name=disk,name={EXPORT},writable=on",
            "--pidfile", str(pidfile), "--daemonize",
        ])  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        _, err = await proc.communicate()
        if proc.returncode == 0:
            return port, int(pidfile.read_text().strip())
        last = err.decode(errors="replace").strip()
        if "in use" not in last:
            break
    raise DriverError(f"cannot export the disk on {address}: {last}")


async def _copy(paths: VMPaths, record: Record, spec: VMSpec, inc: IncomingMigration) -> None:
    """The source's copy, then its digest; the record says how it ended."""
    target = (f"driver=nbd,server.type=inet,server.host={_opt(inc.host)},"
              f"server.port={inc.nbd_port},export={_opt(inc.export)}")
    # The target is the export's raw view of the destination's qcow2 (its format is given by
    # the options: -O cannot be).
    argv = _in_netns(spec, ["qemu-img", "convert", "-n", "--target-is-zero", "-f", "qcow2",
                            str(spec.boot_disk), "--target-image-opts", target])
    proc = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        record.helper_pid = proc.pid
        record.save(paths.migration_json)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            said = err.decode(errors="replace").strip().splitlines()
            raise DriverError(f"the disk copy failed: {said[-1] if said else ''} "
                              f"(qemu-img exit {proc.returncode})")
        record.checksum = await disk_digest.content_digest(spec.boot_disk)
        record.total_s = round(time.time() - record.started, 3)
        record.state, record.helper_pid = str(MigrationState.COMPLETED), None
    except asyncio.CancelledError:
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        raise
    except Exception as exc:  # any failure ends it, with its reason; the source is intact
        record.state = str(MigrationState.FAILED)
        record.reason = str(exc) if isinstance(exc, DriverError) else f"internal error: {exc!r}"
    record.save(paths.migration_json)


def _is(pid: int | None, program: str) -> bool:
    """`pid` still runs `program` (not a pid reused since by another process, nor a zombie)."""
    if pid is None:
        return False
    try:
        return program.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def _stop_helper(record: Record, program: str) -> None:
    pid = record.helper_pid
    if pid is None or not _is(pid, program):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while _is(pid, program) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not _is(pid, program):
            return
    raise DriverError(f"{program} (pid {pid}) survived SIGKILL")


async def remove_cold_incoming(paths: VMPaths, record: Record) -> None:
    """Everything a cold arrival made: its export daemon, its disk, its record."""
    await _stop_helper(record, "qemu-storage-daemon")
    if record.disk_created:
        Path(record.disk_created).unlink(missing_ok=True)
    await asyncio.to_thread(shutil.rmtree, paths.dir, True)
