"""Start one export daemon (qemu-storage-daemon) confined, as a VM's QEMU is started.

The daemon runs as a uid of its own, from the VMs' pool (qemu_confine.UidPool: claimed
machine-wide, so no VM and no other daemon shares it), with no group, no capability and
no_new_privs, started by the VMs' launcher (qemu_exec: it binds the QMP socket as root and
execs the daemon in the foreground of its own session). It can open only what is its own:
the volume's qcow2 (handed over 0600 while exported, given back to root when the export
stops), its TLS-PSK key (0400) and, while one is taken, a snapshot's target. Its directory
is root's (0711): it can neither add nor swap a file there (its QMP socket, pidfile, log and
export.json are root's). qemu-storage-daemon 7.2 has no `-sandbox` option, so, unlike a VM's
QEMU, it runs without a seccomp filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qemu_argv import LAUNCHER, QMP_FD, fmt_node
from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.agent.storage.disks import StorageError

BINARY = "qemu-storage-daemon"
EXPORT_ID = "exp0"
START_TIMEOUT_S = 30.0
LOG = "daemon.log"


def export_args(vol_id: str, name: str) -> dict[str, object]:
    """The daemon's export (its --export option and QMP block-export-add arguments)."""
    return {"type": "nbd", "id": EXPORT_ID, "node-name": fmt_node(vol_id), "name": name,
            "writable": True}


def daemon_argv(d: Path, vol_id: str, path: Path, name: str, listen: tuple[str, int],
                uid: int, netns: str | None) -> list[str]:
    """The launcher's command line: qemu-storage-daemon as `uid`, its QMP on fd QMP_FD."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise StorageError(f"{BINARY} is not installed (Debian: qemu-system-common)")
    qsd = [
        binary,
        "--object", f"tls-creds-psk,id=tls0,endpoint=server,dir={d}",
        "--blockdev", json.dumps({"driver": "file", "node-name": "file0",
                                  "filename": str(path)}),
        "--blockdev", json.dumps({"driver": "qcow2", "node-name": fmt_node(vol_id),
                                  "file": "file0", "discard": "unmap"}),
        # No max-connections: QEMU 7.2's default (0) serves any number of clients, as a
        # live migration needs (the incoming QEMU connects while the source's still is).
        "--nbd-server", json.dumps({"addr": {"type": "inet", "host": listen[0],
                                             "port": str(listen[1])}, "tls-creds": "tls0"}),
        "--export", json.dumps(export_args(vol_id, name)),
        "--chardev", f"socket,id=qmp0,fd={QMP_FD},server=on,wait=off",
        "--monitor", "chardev=qmp0",
    ]  # fmt: skip
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), "--uid", str(uid), "--gid", str(uid),
                "--listen", f"{QMP_FD}={d / 'qmp.sock'}", "--", *qsd]
    return ["ip", "netns", "exec", netns, *launcher] if netns else launcher


async def launch(argv: list[str], d: Path, vol_id: str) -> int:
    """Run the launcher, then wait until the daemon serves its export: its pid (written to
    `d`/pid). A daemon that exits first becomes a StorageError with its stderr."""
    with (d / LOG).open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=err, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
        pid = int(out.decode().split()[-1]) if proc.returncode == 0 else 0
    except (TimeoutError, ValueError, IndexError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        pid = 0
    if not pid:
        raise StorageError(f"cannot export {vol_id}: {BINARY} failed: {_last_error(d)}")
    (d / "pid").write_text(f"{pid}\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(DriverError):
            exports = await qmp_execute(d / "qmp.sock", "query-block-exports", timeout=2)
            if any(e.get("id") == EXPORT_ID for e in exports):
                return pid
        if not is_daemon(pid) or loop.time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise StorageError(f"cannot export {vol_id}: {BINARY} failed: {_last_error(d)}")
        await asyncio.sleep(0.05)


def _last_error(d: Path) -> str:
    try:
        lines = (d / LOG).read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "it exited"


def is_daemon(pid: int) -> bool:
    """Whether `pid` is a live qemu-storage-daemon (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(BINARY.encode())
