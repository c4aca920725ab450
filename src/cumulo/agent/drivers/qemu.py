"""The QEMU driver: one confined QEMU process per VM, controlled through its QMP socket.

Runtime files of a VM live in `<runtime_dir>/<vm_id>/` (see VMPaths). QEMU is started by its
launcher (qemu_exec: the VM's own uid, its seccomp sandbox, its cgroup; see qemu_confine and
qemu_cgroup) in a new session so it outlives the agent; a new QemuDriver on the same
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
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from cumulo.agent.drivers import (
    qemu_confine,
    qemu_io_errors,
    qemu_pinning,
    qemu_process,
    qemu_stats,
    qemu_volumes,
)
from cumulo.agent.drivers.accel import resolve_accel
from cumulo.agent.drivers.base import (
    DriverError,
    MigratingDriver,
    NbdExport,
    Observed,
    PowerState,
    VMSpec,
    VMStats,
    VolumeAttachment,
    check_spec_files,
)
from cumulo.agent.drivers.qemu_argv import (
    UNIX_PATH_MAX,
    Accel,
    Confinement,
    VMPaths,
    build_argv,
    confine,
)
from cumulo.agent.drivers.qemu_cgroup import VmCgroups
from cumulo.agent.drivers.qemu_confine import UidPool
from cumulo.agent.drivers.qemu_migration import Outgoing
from cumulo.agent.drivers.qemu_migration_calls import QemuMigration
from cumulo.agent.drivers.qemu_stats import process_use
from cumulo.agent.drivers.qmp import close_session, qmp_execute, session_for
from cumulo.agent.drivers.serial import SerialPort, StreamSerialPort
from cumulo.agent.storage import psk
from cumulo.domain.arch import Arch
from cumulo.domain.disk_errors import DiskIoError
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB, check_tb_size

QMP_TIMEOUT_S = 1.0
QUIT_GRACE_S = 2.0
CGROUP_EXIT_WAIT_S = 2.0  # an exited QEMU leaves its cgroups within milliseconds
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


class QemuDriver(QemuMigration, MigratingDriver):
    name = "qemu"

    def __init__(self, runtime_dir: Path, accel: str = "auto", uids: UidPool | None = None,
                 cgroups: VmCgroups | None = None,
                 tb_size_mib: int = DEFAULT_TB_SIZE_MIB) -> None:
        self.runtime_dir = Path(runtime_dir).absolute()
        self.uids = uids or UidPool()
        self.cgroups = cgroups or VmCgroups.for_runtime(self.runtime_dir)
        self.requested_accel = accel
        try:
            self.tb_size_mib = check_tb_size(tb_size_mib)  # TCG's translation cache
        except ValueError as e:
            raise DriverError(str(e)) from None
        self._accel: dict[Arch, Accel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # vm_id -> (pid, observed, monotonic time) of the last QMP status
        self._status: dict[str, tuple[int, Observed, float]] = {}
        self._outgoing: dict[str, Outgoing] = {}  # vm_id -> the migration this driver follows
        self._cold_copies: dict[str, asyncio.Task[None]] = {}  # vm_id -> its cold copy
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
            if spec.netns is not None:
                qemu_process.check_netns(spec)
            accel = await self.accel_for(spec.arch)
            pid = await self._start_qemu(spec, paths, accel)
            if spec.cpu_set:  # the agent pins (root); QEMU's sandbox forbids it to itself
                try:
                    await qemu_pinning.pin_vcpus(paths.qmp_sock, spec.cpu_set, spec.vcpus,
                                                 QMP_TIMEOUT_S * 5)
                except DriverError:
                    await self._force_stop(paths)  # unpinned on a dedicated host: not run
                    raise
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
            self._forget_vm(paths)
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
            uid = qemu_confine.read_uid(paths.dir)  # None: started (as root) by an older cumulo
            if uid is not None and att.path is not None and att.path.is_file():
                qemu_confine.grant(paths.dir, uid, att.path, att.volume_id)
            _write_psk(paths, att, uid)
            try:
                await qemu_volumes.attach(paths.qmp_sock, vm_id, att,
                                          paths.psk_dir(att.volume_id))
            except BaseException:
                held = True  # when unsure, the VM may still hold it: keep it the VM's
                with contextlib.suppress(DriverError):
                    held = att.volume_id in await qemu_volumes.attached(paths.qmp_sock)
                if not held:
                    qemu_confine.revoke(paths.dir, att.volume_id)
                    psk.remove_keys(paths.psk_dir(att.volume_id))
                raise

    async def detach_volume(self, vm_id: str, volume_id: str, timeout_s: float) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                qemu_confine.revoke(paths.dir, volume_id)
                psk.remove_keys(paths.psk_dir(volume_id))
                return
            await qemu_volumes.detach(paths.qmp_sock, vm_id, volume_id, timeout_s)
            qemu_confine.revoke(paths.dir, volume_id)
            psk.remove_keys(paths.psk_dir(volume_id))

    async def resize_volume(self, vm_id: str, att: VolumeAttachment, size_bytes: int) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot resize {att.volume_id}: {vm_id} is not running")
            await qemu_volumes.resize(paths.qmp_sock, vm_id, att, size_bytes)

    async def snapshot_volume(self, vm_id: str, volume_id: str, target: Path) -> None:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            if qemu_process.live_pid(paths) is None:
                raise DriverError(f"cannot snapshot {volume_id}: {vm_id} is not running")
            key = f"snapshot:{volume_id}"
            uid = qemu_confine.read_uid(paths.dir)  # None: started (as root) by an older cumulo
            try:
                await qemu_volumes.snapshot(
                    paths.qmp_sock, vm_id, volume_id, target,
                    None if uid is None else lambda t: qemu_confine.grant(paths.dir, uid, t, key))
            finally:
                qemu_confine.revoke(paths.dir, key)  # the copy is the host's again

    async def attached_volumes(self, vm_id: str) -> set[str]:
        paths = self._paths(vm_id)
        if qemu_process.live_pid(paths) is None:
            return set()
        async with self._lock(vm_id):
            return await qemu_volumes.attached(paths.qmp_sock)

    async def vm_stats(self) -> list[VMStats]:
        try:
            entries = [e.name for e in os.scandir(self.runtime_dir) if _is_vm_dir(e)]
        except FileNotFoundError:
            return []
        out = []
        for vm_id in entries:
            paths = self._paths(vm_id)
            pid = qemu_process.live_pid(paths)
            use = process_use(pid) if pid is not None else None
            if pid is None or use is None:
                continue
            # Never waits for the VM's monitor: a stop or a detach in progress holds it, and
            # this scrape then goes without the VM's disk counters.
            lock = self._lock(vm_id)
            disks = {}
            if not lock.locked():
                async with lock:
                    disks = await qemu_stats.block_bytes(paths.qmp_sock, QMP_TIMEOUT_S)
            out.append(VMStats(vm_id=vm_id, cpu_seconds=use[0], rss_bytes=use[1], disks=disks,
                               nics=qemu_stats.tap_bytes(pid, vm_id)))
        return out

    async def _start_qemu(self, spec: VMSpec, paths: VMPaths, accel: Accel,
                          extra: tuple[str, ...] = ()) -> int:
        """Launch the VM's QEMU confined (its uid, files, cgroup); its pid."""
        binary = shutil.which(spec.arch.qemu_binary)
        if binary is None:
            raise DriverError(f"cannot start {spec.vm_id}: {spec.arch.qemu_binary} not found")
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        paths.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        for stale in (paths.stop_marker, paths.pidfile, paths.last_pid, paths.qmp_sock,
                      paths.serial_sock):
            stale.unlink(missing_ok=True)
        uid = await asyncio.to_thread(self.uids.claim, paths.dir)
        await asyncio.to_thread(_hand_over, spec, paths, uid)
        cgroups = await asyncio.to_thread(self.cgroups.prepare, spec.vm_id, spec.vcpus,
                                          spec.ram_mib)
        argv = [*build_argv(spec, paths, accel, self.tb_size_mib), *extra]
        argv = confine(spec, paths, argv, Confinement(uid, cgroups, sys.executable, binary))
        qemu_process.write_spec_record(paths, spec, accel, argv)
        pid = await qemu_process.launch(argv, paths)
        paths.last_pid.write_text(f"{pid}\n")
        await session_for(paths.qmp_sock).reset()  # a new QEMU: a new monitor connection
        return pid

    def _forget_vm(self, paths: VMPaths) -> None:
        """The VM leaves this host: its files go back to root, its uid and cgroup are freed."""
        qemu_confine.revoke_all(paths.dir)
        self.uids.release(paths.dir)
        self.cgroups.remove(paths.vm_id)

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

    def _forget_status(self, vm_id: str) -> None:
        self._status.pop(vm_id, None)

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
            await self._remove_cgroups(paths)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not await qemu_process.wait_gone(paths, pid, 10.0):
            raise DriverError(f"qemu (pid {pid}) of {paths.vm_id} survived SIGKILL")
        await self._remove_cgroups(paths)

    async def _remove_cgroups(self, paths: VMPaths) -> None:
        """The cgroups of a VM whose QEMU has just exited (made again at the next start)."""
        await asyncio.to_thread(self.cgroups.remove, paths.vm_id, CGROUP_EXIT_WAIT_S)


def _hand_over(spec: VMSpec, paths: VMPaths, uid: int) -> None:
    """Give the VM's QEMU (uid) its files and nothing else: its boot disk, volumes, console
    log and pidfile read-write, its seed read-only; files it held before and no longer has
    (a volume detached while it was stopped) go back to root."""
    mine = {"boot": spec.boot_disk,
            **{v.volume_id: v.path for v in spec.volumes if v.path is not None}}
    if spec.seed_iso is not None:
        mine["seed"] = spec.seed_iso
    for path in (paths.pidfile, paths.console_log):
        path.touch(exist_ok=True)
        mine[path.name] = path
    qemu_confine.revoke_all(paths.dir, keep=mine)
    reads = [p for p in (spec.kernel, spec.initrd) if p is not None]
    qemu_confine.check_reachable(spec.vm_id, uid, [*mine.values(), *reads])
    for key, path in mine.items():
        qemu_confine.grant(paths.dir, uid, path, key, writable=key != "seed")
    for v in spec.volumes:
        _write_psk(paths, v, uid)


def _write_psk(paths: VMPaths, att: VolumeAttachment, uid: int | None) -> None:
    """A volume over NBD: its TLS-PSK key where the VM's QEMU (uid) and nobody else reads it."""
    if isinstance(att.source, NbdExport):
        try:
            psk.write_key(paths.psk_dir(att.volume_id), att.volume_id, att.source.key, uid)
        except ValueError as e:
            raise DriverError(f"cannot attach {att.volume_id}: {e}") from e


def _is_vm_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
