"""The QEMU driver: one daemonized QEMU process per VM, controlled through its QMP socket.

Runtime files of a VM live in `<runtime_dir>/<vm_id>/` (see VMPaths). QEMU is launched with
`-daemonize` in a new session so it outlives the agent; a new QemuDriver on the same
runtime_dir re-adopts running VMs through their pidfiles and QMP sockets.

How observe() decides:
- pidfile names a live process whose /proc/<pid>/cmdline carries this VM's pidfile path
  (guards against PID reuse) -> ask QMP `query-status`: running -> RUNNING, paused-like ->
  PAUSED, "shutdown" -> SHUTDOWN (the guest powered off; `-action shutdown=pause` keeps the
  process). It is the reconciler's job to call force_stop on a SHUTDOWN VM.
- no live process -> STOPPED when `stop-requested` exists (written BEFORE cumulo stops a VM
  on purpose), else CRASHED with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from cumulo.agent.drivers import qemu_io_errors, qemu_migration, qemu_process, qemu_volumes
from cumulo.agent.drivers.accel import resolve_accel
from cumulo.agent.drivers.base import (
    DriverError,
    IncomingMigration,
    MigratingDriver,
    MigrationProgress,
    MigrationState,
    MigrationStatus,
    Observed,
    PowerState,
    VMSpec,
    VolumeAttachment,
    check_spec_files,
)
from cumulo.agent.drivers.qemu_argv import UNIX_PATH_MAX, Accel, VMPaths, build_argv
from cumulo.agent.drivers.qemu_migration import Outgoing, Record
from cumulo.agent.drivers.qmp import QMPSession, close_session, qmp_execute, session_for
from cumulo.agent.drivers.serial import SerialPort, StreamSerialPort
from cumulo.domain.arch import Arch
from cumulo.domain.disk_errors import DiskIoError

QMP_TIMEOUT_S = 1.0
QUIT_GRACE_S = 2.0
OBSERVE_CONCURRENCY = 32
# A live process is checked through /proc at every observe (a crash is seen at once); its
# QMP status (guest powered off, paused) is asked at most this often, or at every observe
# while cumulo waits for a stop it asked for. One QMP session per VM per second was most of
# an idle agent's CPU.
STATUS_REFRESH_S = 5.0
_LONGEST_VM_ID = "abcd-" + "0" * 17  # ids are `<prefix up to 4>-<17 hex>`

_PAUSED = {
    "paused", "suspended", "prelaunch", "inmigrate", "postmigrate", "finish-migrate",
    "save-vm", "restore-vm", "debug", "io-error", "watchdog", "colo",
}  # fmt: skip
_BROKEN = {"guest-panicked": "the guest kernel panicked", "internal-error": "qemu internal error"}


class QemuDriver(MigratingDriver):
    name = "qemu"

    def __init__(self, runtime_dir: Path, accel: str = "auto") -> None:
        self.runtime_dir = Path(runtime_dir).absolute()
        self.requested_accel = accel
        self._accel: dict[Arch, Accel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # vm_id -> (pid, observed, monotonic time) of the last QMP status
        self._status: dict[str, tuple[int, Observed, float]] = {}
        self._outgoing: dict[str, Outgoing] = {}  # vm_id -> the migration this driver follows
        probe = VMPaths.for_vm(self.runtime_dir, _LONGEST_VM_ID).qmp_sock
        if len(os.fsencode(probe)) >= UNIX_PATH_MAX:
            raise DriverError(
                f"runtime dir {self.runtime_dir} is too long: QMP socket paths under it would"
                f" exceed the {UNIX_PATH_MAX - 1}-byte unix socket limit"
                f" ({len(os.fsencode(probe))} bytes); use a shorter path"
            )

    # -- contract ---------------------------------------------------------------------------

    async def observe(self) -> dict[str, Observed]:
        try:
            entries = [e for e in os.scandir(self.runtime_dir) if _is_vm_dir(e)]
        except FileNotFoundError:
            return {}
        gate = asyncio.Semaphore(OBSERVE_CONCURRENCY)

        async def one(name: str) -> Observed:
            async with gate:
                return await self._observe_one(self._paths(name))

        results = await asyncio.gather(*(one(e.name) for e in entries))
        return {o.vm_id: o for o in results}

    async def start(self, spec: VMSpec) -> Observed:
        paths = self._paths(spec.vm_id)
        async with self._lock(spec.vm_id):
            pid = qemu_process.live_pid(paths)
            if pid is not None:
                return await self._observe_one(paths)
            check_spec_files(spec)
            binary = shutil.which(spec.arch.qemu_binary)
            if binary is None:
                raise DriverError(f"cannot start {spec.vm_id}: {spec.arch.qemu_binary} not found")
            if spec.netns is not None:
                _check_netns(spec)
            accel = await self.accel_for(spec.arch)
            paths.dir.mkdir(parents=True, exist_ok=True)
            for stale in (paths.stop_marker, paths.pidfile, paths.qmp_sock, paths.serial_sock):
                stale.unlink(missing_ok=True)
            argv = build_argv(spec, paths, accel)
            paths.spec_json.write_text(json.dumps(_spec_record(spec, accel, argv), indent=1))
            pid = await self._launch(argv, paths)
            return Observed(spec.vm_id, PowerState.RUNNING, pid)

    async def request_shutdown(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                return
            paths.stop_marker.touch()
            await qmp_execute(paths.qmp_sock, "system_powerdown", timeout=QMP_TIMEOUT_S)
            await self._run_if_paused(paths)  # a paused guest would never see the request

    async def force_stop(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            await self._force_stop(paths)

    async def reboot(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot reboot {vm_id}: it is not running")
            await qmp_execute(paths.qmp_sock, "system_reset", timeout=QMP_TIMEOUT_S)
            # A reset leaves a paused VM paused (QEMU's "prelaunch"), its failed writes gone.
            await self._run_if_paused(paths)

    async def resume(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot resume {vm_id}: it is not running")
            await qmp_execute(paths.qmp_sock, "cont", timeout=QMP_TIMEOUT_S)
            self._status.pop(vm_id, None)

    async def destroy(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            await self._force_stop(paths)
            await asyncio.to_thread(shutil.rmtree, paths.dir, True)
            await close_session(paths.qmp_sock)
        self._locks.pop(vm_id, None)
        self._outgoing.pop(vm_id, None)

    async def console_log(self, vm_id: str, max_bytes: int = 64 * 1024) -> str:
        path = self._paths(vm_id).console_log
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                data = f.read(max_bytes)
        except (FileNotFoundError, NotADirectoryError):
            return ""
        return data.decode("utf-8", errors="replace")

    async def open_serial(self, vm_id: str) -> SerialPort:
        paths = self._paths(vm_id)
        if qemu_process.live_pid(paths) is None:
            raise DriverError(f"cannot open the serial port of {vm_id}: it is not running")
        try:
            reader, writer = await asyncio.open_unix_connection(paths.serial_sock)
        except FileNotFoundError:
            raise DriverError(
                f"{vm_id} has no interactive serial port (started by an older cumulo):"
                " stop and start it to get one") from None
        except OSError as e:
            raise DriverError(f"cannot open the serial port of {vm_id}: {e}") from e
        return StreamSerialPort(reader, writer)

    # -- block volumes (see qemu_volumes) ---------------------------------------------------

    async def attach_volume(self, vm_id: str, att: VolumeAttachment) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot attach {att.volume_id} to {vm_id}: it is not running")
            await qemu_volumes.attach(paths.qmp_sock, vm_id, att)

    async def detach_volume(self, vm_id: str, volume_id: str, timeout_s: float) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                return
            await qemu_volumes.detach(paths.qmp_sock, vm_id, volume_id, timeout_s)

    async def resize_volume(self, vm_id: str, volume_id: str, size_bytes: int) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot resize {volume_id}: {vm_id} is not running")
            await qemu_volumes.resize(paths.qmp_sock, vm_id, volume_id, size_bytes)

    async def snapshot_volume(self, vm_id: str, volume_id: str, target: Path) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot snapshot {volume_id}: {vm_id} is not running")
            await qemu_volumes.snapshot(paths.qmp_sock, vm_id, volume_id, target)

    async def attached_volumes(self, vm_id: str) -> set[str]:
        paths = self._paths(vm_id)
        if qemu_process.live_pid(paths) is None:
            return set()
        async with self._lock(vm_id):
            return await qemu_volumes.attached(paths.qmp_sock)

    # -- live migration (see qemu_migration) -------------------------------------------------

    async def prepare_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        _check_address(address)
        paths = self._paths(spec.vm_id)
        async with self._lock(spec.vm_id):
            record = Record.load(paths.migration_json)
            if qemu_process.live_pid(paths) is not None:
                if record is not None and record.role == "destination":
                    return IncomingMigration(**record.incoming)
                raise DriverError(f"cannot receive {spec.vm_id}: it already runs on this host")
            if spec.volumes:
                raise DriverError(f"cannot receive {spec.vm_id}: volumes do not migrate yet")
            if spec.boot_disk.exists() and (record is None or record.role != "destination"):
                raise DriverError(
                    f"cannot receive {spec.vm_id}: its boot disk {spec.boot_disk} already exists"
                )
            if disk_bytes <= 0:
                raise DriverError(f"cannot receive {spec.vm_id}: disk size {disk_bytes} <= 0")
            await _qemu_img("create", "-q", "-f", "qcow2", str(spec.boot_disk), str(disk_bytes))
            record = Record("destination", {}, str(MigrationState.INCOMING),
                            disk_created=str(spec.boot_disk))
            try:
                check_spec_files(spec)
                binary = shutil.which(spec.arch.qemu_binary)
                if binary is None:
                    raise DriverError(f"cannot receive {spec.vm_id}: {spec.arch.qemu_binary}"
                                      " not found")
                if spec.netns is not None:
                    _check_netns(spec)
                accel = await self.accel_for(spec.arch)
                paths.dir.mkdir(parents=True, exist_ok=True)
                record.save(paths.migration_json)
                for stale in (paths.stop_marker, paths.pidfile, paths.qmp_sock):
                    stale.unlink(missing_ok=True)
                # -S: the guest never runs here before finish_migration says so (no split brain)
                argv = build_argv(spec, paths, accel)
                argv[-1:-1] = ["-S", "-incoming", "defer"]
                paths.spec_json.write_text(json.dumps(_spec_record(spec, accel, argv), indent=1))
                await self._launch(argv, paths)
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
            if record.role == "destination":
                qmp = session_for(paths.qmp_sock)
                if (qemu_process.live_pid(paths) is None
                        or await _incoming_state(qmp) != "completed"):
                    raise DriverError(f"cannot finish the arrival of {vm_id}: it has not arrived")
                await qemu_migration.resume_incoming(qmp)
                paths.migration_json.unlink(missing_ok=True)
                self._status.pop(vm_id, None)
                return
            if MigrationState(record.state) is not MigrationState.COMPLETED:
                raise DriverError(f"cannot finish the migration of {vm_id}: it is {record.state}")
            boot_disk = _boot_disk_of(paths)
            await self._force_stop(paths)
            await asyncio.to_thread(shutil.rmtree, paths.dir, True)
            await close_session(paths.qmp_sock)
            if boot_disk is not None:
                boot_disk.unlink(missing_ok=True)
        self._outgoing.pop(vm_id, None)

    async def _remove_incoming(self, paths: VMPaths, record: Record) -> None:
        await self._force_stop(paths)
        await asyncio.to_thread(shutil.rmtree, paths.dir, True)
        await close_session(paths.qmp_sock)
        if record.disk_created:
            Path(record.disk_created).unlink(missing_ok=True)

    async def _launch(self, argv: list[str], paths: VMPaths) -> int:
        pid = await qemu_process.launch(argv, paths)
        paths.last_pid.write_text(f"{pid}\n")
        await session_for(paths.qmp_sock).reset()  # a new QEMU: a new monitor connection
        return pid

    # -- extras -----------------------------------------------------------------------------

    async def accel_for(self, arch: Arch) -> Accel:
        """The accelerator VMs of `arch` get (probed once per host boot for `auto`)."""
        if arch not in self._accel:
            cache_dir = self.runtime_dir / ".accel"
            self._accel[arch] = await asyncio.to_thread(
                resolve_accel, self.requested_accel, arch, cache_dir
            )
        return self._accel[arch]

    def paths(self, vm_id: str) -> VMPaths:
        return self._paths(vm_id)

    # -- internals --------------------------------------------------------------------------

    def _paths(self, vm_id: str) -> VMPaths:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise DriverError(f"invalid vm id {vm_id!r}")
        paths = VMPaths.for_vm(self.runtime_dir, vm_id)
        if len(os.fsencode(paths.qmp_sock)) >= UNIX_PATH_MAX:
            raise DriverError(f"QMP socket path {paths.qmp_sock} exceeds the unix socket limit")
        return paths

    async def _run_if_paused(self, paths: VMPaths) -> None:
        """`cont` unless the VM runs (or is powered off); the status is asked afresh next."""
        self._status.pop(paths.vm_id, None)
        status = await qmp_execute(paths.qmp_sock, "query-status", timeout=QMP_TIMEOUT_S)
        if isinstance(status, dict) and status.get("status") in _PAUSED:
            await qmp_execute(paths.qmp_sock, "cont", timeout=QMP_TIMEOUT_S)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    async def _observe_one(self, paths: VMPaths) -> Observed:
        vm_id = paths.vm_id
        pid = qemu_process.live_pid(paths)
        if pid is None:
            if paths.stop_marker.exists():
                return Observed(vm_id, PowerState.STOPPED, None, "stopped on request")
            return Observed(vm_id, PowerState.CRASHED, None, qemu_process.crash_reason(paths))
        cached = self._status.get(vm_id)
        if (cached is not None and cached[0] == pid and not paths.stop_marker.exists()
                and time.monotonic() - cached[2] < STATUS_REFRESH_S):
            return cached[1]
        observed = await self._query_status(paths, pid)
        if observed.pid is not None:
            self._status[vm_id] = (observed.pid, observed, time.monotonic())
        return observed

    async def _query_status(self, paths: VMPaths, pid: int) -> Observed:
        vm_id = paths.vm_id
        try:
            status = await qmp_execute(paths.qmp_sock, "query-status", timeout=QMP_TIMEOUT_S)
        except DriverError as exc:
            if qemu_process.live_pid(paths) is None:  # it died while we asked
                return await self._observe_one(paths)
            return Observed(vm_id, PowerState.RUNNING, pid, f"QMP unresponsive: {exc}")
        state = str(status.get("status", "")) if isinstance(status, dict) else ""
        if state == "running":
            return Observed(vm_id, PowerState.RUNNING, pid)
        if state == "shutdown":
            return Observed(vm_id, PowerState.SHUTDOWN, pid, "the guest powered off")
        if state in _BROKEN:
            return Observed(vm_id, PowerState.CRASHED, pid, _BROKEN[state])
        if state in _PAUSED:
            errors: tuple[DiskIoError, ...] = ()
            if state == "io-error":
                with contextlib.suppress(DriverError):  # the status alone still holds
                    errors = await qemu_io_errors.io_errors(paths.qmp_sock, QMP_TIMEOUT_S)
            return Observed(vm_id, PowerState.PAUSED, pid, f"qemu status {state}", errors)
        return Observed(vm_id, PowerState.RUNNING, pid, f"unknown qemu status {state!r}")

    async def _force_stop(self, paths: VMPaths) -> None:
        if not paths.dir.is_dir():
            return
        paths.stop_marker.touch()
        pid = qemu_process.live_pid(paths)
        if pid is None:
            return
        with contextlib.suppress(DriverError):
            await qmp_execute(paths.qmp_sock, "quit", timeout=QMP_TIMEOUT_S)
        if await qemu_process.wait_gone(paths, pid, QUIT_GRACE_S):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not await qemu_process.wait_gone(paths, pid, 10.0):
            raise DriverError(f"qemu (pid {pid}) of {paths.vm_id} survived SIGKILL")


def _is_vm_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)


_ENDED = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


def _check_address(address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise DriverError(f"invalid migration address {address!r}: not an IP address") from None


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


async def _qemu_img(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"qemu-img {args[0]} failed: {err.decode(errors='replace').strip()}")


def _check_netns(spec: VMSpec) -> None:
    if shutil.which("ip") is None:
        raise DriverError(f"cannot start {spec.vm_id}: `ip` (iproute2) not found")
    if not spec.netns or "/" in spec.netns or not Path("/run/netns", spec.netns).exists():
        raise DriverError(
            f"cannot start {spec.vm_id}: network namespace {spec.netns!r} does not exist"
        )


def _spec_record(spec: VMSpec, accel: Accel, argv: list[str]) -> dict[str, Any]:
    return {
        "vm_id": spec.vm_id,
        "hostname": spec.hostname,
        "arch": str(spec.arch),
        "vcpus": spec.vcpus,
        "ram_mib": spec.ram_mib,
        "boot_disk": str(spec.boot_disk),
        "kernel": None if spec.kernel is None else str(spec.kernel),
        "initrd": None if spec.initrd is None else str(spec.initrd),
        "kernel_cmdline": spec.kernel_cmdline,
        "seed_iso": None if spec.seed_iso is None else str(spec.seed_iso),
        "netns": spec.netns,
        "nics": [{"tap": n.tap, "mac": n.mac} for n in spec.nics],
        "extra": dict(spec.extra),
        "volumes": [
            {"id": v.volume_id, "path": str(v.path), "iops": v.iops, "mbps": v.mbps}
            for v in spec.volumes
        ],
        "accel": accel,
        "argv": argv,
    }
