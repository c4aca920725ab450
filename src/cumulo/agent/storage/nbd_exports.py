"""NBD exports of this host's volumes to instances on other hosts: one qemu-storage-daemon
per exported volume.

Why one daemon per volume, not one per host: QEMU's NBD server takes one set of TLS
credentials, so only a daemon of its own gives each export its own TLS-PSK key (a client
holding one volume's key cannot open another's even knowing its name); a daemon that dies
takes one volume with it; and the volume's own QMP socket snapshots it online. The cost is
a process (~20 MiB) and a port per attached volume. (No online grow: the export holds the
size fixed, and QEMU's NBD client could not learn a new one anyway.)

The daemon listens on this host's underlay address (inside the host's network namespace),
requires TLS (`tls-creds-psk`, identity = the volume id) and exports the qcow2's guest view
under a secret name. Its files are `<root>/<vol>/`: keys.psk (0400 root), qmp.sock, pid, and
export.json (what it was started with). It is daemonized: an agent restart finds it running
and adopts it when export.json matches the assignment (restarts it otherwise: the client's
NBD node reconnects, and nothing written was acknowledged before it reached the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from cumulo.agent.drivers import qemu_volumes
from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qemu_argv import fmt_node
from cumulo.agent.storage import psk
from cumulo.agent.storage.disks import StorageError, run_tool
from cumulo.domain.ids import is_id

BINARY = "qemu-storage-daemon"
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class ExportSpec:
    """What an export is: its secret name, TLS-PSK key (hex) and TCP port."""

    name: str
    key: str
    port: int


class VolumeExporter(Protocol):
    async def ensure(self, vol_id: str, path: Path, spec: ExportSpec) -> None: ...
    async def stop(self, vol_id: str) -> None: ...
    async def snapshot(self, vol_id: str, target: Path) -> None: ...
    def exported(self) -> set[str]: ...


@dataclass
class RecordingExporter:
    """The fake driver's hosts: exports are recorded, no daemon runs (control-plane tests)."""

    exports: dict[str, tuple[Path, ExportSpec]] = field(default_factory=dict)

    async def ensure(self, vol_id: str, path: Path, spec: ExportSpec) -> None:
        if not path.is_file():
            raise StorageError(f"cannot export {vol_id}: {path} does not exist")
        self.exports[vol_id] = (path, spec)

    async def stop(self, vol_id: str) -> None:
        self.exports.pop(vol_id, None)

    async def snapshot(self, vol_id: str, target: Path) -> None:
        if vol_id not in self.exports:
            raise StorageError(f"cannot snapshot {vol_id}: it is not exported")
        await run_tool("qemu-img", "convert", "-q", "-U", "-f", "qcow2", "-O", "qcow2",
                       str(self.exports[vol_id][0]), str(target))

    def exported(self) -> set[str]:
        return set(self.exports)


class DaemonExporter:
    def __init__(self, root: Path, listen_ip: str, netns: str | None) -> None:
        self.root = root
        self.listen_ip = listen_ip
        self.netns = netns
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, vol_id: str) -> Path:
        if not is_id(vol_id) or not vol_id.startswith("vol-"):
            raise StorageError(f"refusing malformed volume id {vol_id!r}")
        return self.root / vol_id

    def exported(self) -> set[str]:
        return {d.name for d in self.root.iterdir() if d.is_dir() and is_id(d.name)}

    def running(self, vol_id: str) -> int | None:
        """The pid of the volume's daemon when it runs (checked: it is qemu-storage-daemon)."""
        try:
            pid = int((self._dir(vol_id) / "pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_daemon(pid) else None

    async def ensure(self, vol_id: str, path: Path, spec: ExportSpec) -> None:
        d = self._dir(vol_id)
        want = {**asdict(spec), "path": str(path), "listen": self.listen_ip}
        with contextlib.suppress(OSError, ValueError):
            if self.running(vol_id) and json.loads((d / "export.json").read_text()) == want:
                return  # adopted: the daemon of an earlier agent serves it as asked
        await self.stop(vol_id)
        if not path.is_file():
            raise StorageError(f"cannot export {vol_id}: {path} does not exist")
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            psk.write_key(d, vol_id, spec.key)
        except ValueError as e:
            raise StorageError(f"cannot export {vol_id}: {e}") from e
        (d / "export.json").write_text(json.dumps(want))
        argv = [
            BINARY,
            "--object", f"tls-creds-psk,id=tls0,endpoint=server,dir={d}",
            "--blockdev", json.dumps({"driver": "file", "node-name": "file0",
                                      "filename": str(path)}),
            "--blockdev", json.dumps({"driver": "qcow2", "node-name": fmt_node(vol_id),
                                      "file": "file0", "discard": "unmap"}),
            # No max-connections: QEMU 7.2's default (0) serves any number of clients, as a
            # live migration needs (the incoming QEMU connects while the source's still is).
            "--nbd-server", json.dumps({"addr": {"type": "inet", "host": self.listen_ip,
                                                 "port": str(spec.port)},
                                        "tls-creds": "tls0"}),
            "--export", json.dumps({"type": "nbd", "id": "exp0", "node-name": fmt_node(vol_id),
                                    "name": spec.name, "writable": True}),
            "--chardev", f"socket,id=qmp0,path={d / 'qmp.sock'},server=on,wait=off",
            "--monitor", "chardev=qmp0",
            "--pidfile", str(d / "pid"),
            "--daemonize",
        ]  # fmt: skip
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            shutil.rmtree(d, ignore_errors=True)
            msg = err.decode(errors="replace").strip().splitlines()
            raise StorageError(f"cannot export {vol_id}: {BINARY} failed: "
                               f"{msg[-1] if msg else proc.returncode}")

    async def snapshot(self, vol_id: str, target: Path) -> None:
        """A point-in-time copy taken by the daemon (blockdev-backup, as a VM's QEMU does for
        a local volume: the same code), while the other host's instance writes on."""
        try:
            await qemu_volumes.snapshot(self._dir(vol_id) / "qmp.sock", "its export", vol_id,
                                        target)
        except DriverError as e:
            raise StorageError(str(e)) from e

    async def stop(self, vol_id: str) -> None:
        d = self._dir(vol_id)
        pid = self.running(vol_id)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_WAIT_S
            # The daemon removes its pidfile before it is gone: wait for the process.
            while is_daemon(pid) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if is_daemon(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while is_daemon(pid):
                    await asyncio.sleep(0.05)
        shutil.rmtree(d, ignore_errors=True)


def is_daemon(pid: int) -> bool:
    """Whether `pid` is a live qemu-storage-daemon (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(BINARY.encode())
