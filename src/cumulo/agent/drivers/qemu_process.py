"""The QEMU process of a VM: launch it, find it (pidfile checked against PID reuse), wait
for it to go, say why it is not there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from cumulo.agent.drivers.base import DriverError, VMSpec
from cumulo.agent.drivers.qemu_argv import Accel, VMPaths

LAUNCH_TIMEOUT_S = 30.0


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def live_pid(paths: VMPaths) -> int | None:
    """The pid of this VM's QEMU if it is alive (not a zombie, not a reused pid)."""
    pid = read_pid(paths.pidfile)
    if pid is None or pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A zombie has an empty cmdline; a reused pid has someone else's.
    return pid if os.fsencode(paths.pidfile) in cmdline.split(b"\0") else None


async def wait_gone(paths: VMPaths, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
        if os.fsencode(paths.pidfile) not in cmdline.split(b"\0"):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)


def crash_reason(paths: VMPaths) -> str:
    with contextlib.suppress(OSError):
        if said := " ".join(paths.exit_reason.read_text(errors="replace").split())[:400]:
            return said
    pid = read_pid(paths.pidfile) or read_pid(paths.last_pid)
    if pid is not None:
        return f"qemu process exited unexpectedly (pid {pid})"
    try:
        err = " ".join(paths.launch_log.read_text(errors="replace").split())
    except OSError:
        err = ""
    return f"qemu failed to start: {err[:300]}" if err else "qemu is not running"


async def launch(argv: list[str], paths: VMPaths) -> int:
    """Run the launcher (qemu_exec), then wait until QEMU's monitor greets: its pid.

    QEMU runs in the foreground of its own session (its seccomp sandbox forbids the fork of
    -daemonize), so "started" is its monitor answering; a QEMU that exits first (a bad option,
    a disk it may not open) becomes a DriverError with its stderr.
    """
    with paths.launch_log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), LAUNCH_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise DriverError(
            f"qemu for {paths.vm_id} did not finish starting within {LAUNCH_TIMEOUT_S:.0f}s"
        ) from None
    if proc.returncode != 0:
        raise DriverError(f"qemu for {paths.vm_id} failed to start (exit {proc.returncode}):"
                          f" {_launch_error(paths)}")
    try:
        pid = int(out.decode().split()[-1])
    except (ValueError, IndexError):
        raise DriverError(f"qemu for {paths.vm_id}: its launcher named no pid") from None
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not await _greets(paths.qmp_sock):
        if not _alive(pid):
            raise DriverError(f"qemu for {paths.vm_id} failed to start: {_launch_error(paths)}")
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise DriverError(
                f"qemu for {paths.vm_id} did not finish starting within {LAUNCH_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.02)
    return pid


def _launch_error(paths: VMPaths) -> str:
    paths.pidfile.unlink(missing_ok=True)  # crash_reason then tells the launch error
    return paths.launch_log.read_text(errors="replace").strip()


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie's is empty
    except OSError:
        return False


async def _greets(sock: Path) -> bool:
    """Whether QEMU's monitor sends its greeting on `sock` (it does once QEMU's init is done)."""
    try:
        reader, writer = await asyncio.open_unix_connection(sock)
    except OSError:
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 0.5)
    except (TimeoutError, OSError):
        line = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return line.startswith(b'{"QMP"')


def check_netns(spec: VMSpec) -> None:
    if shutil.which("ip") is None:
        raise DriverError(f"cannot start {spec.vm_id}: `ip` (iproute2) not found")
    if not spec.netns or "/" in spec.netns or not Path("/run/netns", spec.netns).exists():
        raise DriverError(
            f"cannot start {spec.vm_id}: network namespace {spec.netns!r} does not exist"
        )


def spec_record(spec: VMSpec, accel: Accel, argv: list[str]) -> dict[str, Any]:
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
            {"id": v.volume_id, "path": None if v.path is None else str(v.path),
             "iops": v.iops, "mbps": v.mbps}
            for v in spec.volumes
        ],
        "accel": accel,
        "argv": argv,
    }


def write_spec_record(paths: VMPaths, spec: VMSpec, accel: Accel, argv: list[str]) -> None:
    """`spec.json`: what the VM was started with (read back by humans and by the driver)."""
    paths.spec_json.write_text(json.dumps(spec_record(spec, accel, argv), indent=1))


async def qemu_img(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"qemu-img {args[0]} failed: {err.decode(errors='replace').strip()}")
