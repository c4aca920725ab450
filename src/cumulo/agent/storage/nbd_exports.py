"""NBD exports of this host's volumes to instances on other hosts: one qemu-storage-daemon
per exported volume.

Why one daemon per volume, not one per host: QEMU's NBD server takes one set of TLS
credentials, so only a daemon of its own gives each export its own TLS-PSK key (a client
holding one volume's key cannot open another's even knowing its name); a daemon that dies
takes one volume with it; and the volume's own QMP socket snapshots and grows it online. The
cost is a process (~20 MiB) and a port per attached volume.

An online grow (`grow`): QEMU 7.2's NBD export forbids resizing its node and tells every
client the size it had when it was added, so the daemon drops the export (its client's
connection breaks; the client's requests wait for the reconnect, `reconnect-delay`),
resizes the qcow2 and adds the export again under the same name and key: a new connection
sees the new size (the client's host then moves its disk onto one: qemu_volumes.resize). A
`growing` file marks the moment without an export, so that an agent that died then adds it
back instead of adopting a daemon that serves nothing.

The daemon listens on this host's underlay address (inside the host's network namespace),
requires TLS (`tls-creds-psk`, identity = the volume id) and exports the qcow2's guest view
under a secret name. It runs confined, as a uid of its own (nbd_daemon). Its files are
`<root>/<vol>/` (0711 root): keys.psk (0400, the daemon's), qmp.sock, pid, daemon.log, uid,
grants and export.json (what it was started with; all root's). It runs in a session of its
own: an agent restart finds it running and adopts it when export.json matches the
assignment (restarts it otherwise: the client's NBD node reconnects, and nothing written was
acknowledged before it reached the daemon).
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
from typing import Any, Protocol

from cumulo.agent.drivers import qemu_confine, qemu_volumes
from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qemu_argv import fmt_node
from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.agent.storage import nbd_daemon, psk
from cumulo.agent.storage.disks import StorageError, run_tool
from cumulo.agent.storage.nbd_daemon import is_daemon
from cumulo.domain.ids import is_id

__all__ = ["DaemonExporter", "ExportSpec", "RecordingExporter", "VolumeExporter", "is_daemon"]

STOP_WAIT_S = 10.0
QMP_TIMEOUT_S = 10.0
GROWING = "growing"  # present (the size asked) while a grow has the export down


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
    async def grow(self, vol_id: str, path: Path, size_bytes: int) -> None: ...
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

    async def grow(self, vol_id: str, path: Path, size_bytes: int) -> None:
        await run_tool("qemu-img", "resize", "-q", "-f", "qcow2", str(path), str(size_bytes))

    def exported(self) -> set[str]:
        return set(self.exports)


class DaemonExporter:
    def __init__(self, root: Path, listen_ip: str, netns: str | None,
                 uids: qemu_confine.UidPool | None = None) -> None:
        self.root = root
        self.listen_ip = listen_ip
        self.netns = netns
        self.uids = uids or qemu_confine.UidPool()  # the VMs' pool: no uid is ever shared
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
                if (d / GROWING).exists():  # an agent died mid-grow: finish it
                    await self._grow_running(vol_id, spec, int((d / GROWING).read_text()))
                return  # adopted: the daemon of an earlier agent serves it as asked
        await self.stop(vol_id)
        if not path.is_file():
            raise StorageError(f"cannot export {vol_id}: {path} does not exist")
        d.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(d, 0o711)  # the daemon's uid may enter (its key) but not list nor write
        try:
            uid = self.uids.claim(d)
            blocked = qemu_confine.unreachable(path)
            if blocked is not None:
                raise StorageError(f"cannot export {vol_id}: its daemon runs as uid {uid} and "
                                   f"cannot reach {path}: {blocked} is not searchable by other "
                                   f"users (chmod o+x {blocked})")
            psk.write_key(d, vol_id, spec.key, uid=uid)
            (d / "export.json").write_text(json.dumps(want))
            qemu_confine.grant(d, uid, path, vol_id)
            await nbd_daemon.launch(nbd_daemon.daemon_argv(
                d, vol_id, path, spec.name, (self.listen_ip, spec.port), uid, self.netns),
                d, vol_id)
        except (StorageError, DriverError, ValueError, OSError) as e:
            self._clean(d)
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"cannot export {vol_id}: {e}") from e

    async def snapshot(self, vol_id: str, target: Path) -> None:
        """A point-in-time copy taken by the daemon (blockdev-backup, as a VM's QEMU does for
        a local volume: the same code), while the other host's instance writes on."""
        d = self._dir(vol_id)
        uid = qemu_confine.read_uid(d)
        try:
            await qemu_volumes.snapshot(
                d / "qmp.sock", "its export", vol_id, target,
                None if uid is None else lambda t: qemu_confine.grant(d, uid, t, "snapshot"))
        except DriverError as e:
            raise StorageError(str(e)) from e
        finally:
            qemu_confine.revoke(d, "snapshot")  # the copy is root's again

    async def grow(self, vol_id: str, path: Path, size_bytes: int) -> None:
        """Grow the volume to `size_bytes` while it is exported (see the module's doc)."""
        d = self._dir(vol_id)
        try:
            spec = ExportSpec(**{k: v for k, v in json.loads((d / "export.json").read_text())
                                 .items() if k in ("name", "key", "port")})
        except (OSError, ValueError, TypeError):
            spec = None
        if spec is None or self.running(vol_id) is None:  # no daemon holds it: the file
            await run_tool("qemu-img", "resize", "-q", "-f", "qcow2", str(path),
                           str(size_bytes))
            return
        (d / GROWING).write_text(str(size_bytes))
        await self._grow_running(vol_id, spec, size_bytes)

    async def _grow_running(self, vol_id: str, spec: ExportSpec, size_bytes: int) -> None:
        sock = self._dir(vol_id) / "qmp.sock"
        try:
            exported = any(e.get("id") == nbd_daemon.EXPORT_ID
                           for e in await _qmp(sock, "query-block-exports"))
            if await _virtual_size(sock, vol_id) < size_bytes:
                if exported:
                    await _qmp(sock, "block-export-del",
                               {"id": nbd_daemon.EXPORT_ID, "mode": "hard"})
                    exported = False
                await _resize(sock, vol_id, size_bytes)
            if not exported:
                await _qmp(sock, "block-export-add", nbd_daemon.export_args(vol_id, spec.name))
        except DriverError as e:
            raise StorageError(f"cannot grow {vol_id}: {e}") from e
        (self._dir(vol_id) / GROWING).unlink(missing_ok=True)

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
        self._clean(d)

    def _clean(self, d: Path) -> None:
        """The volume file back to root, the uid freed, the directory gone."""
        qemu_confine.revoke_all(d)
        self.uids.release(d)
        shutil.rmtree(d, ignore_errors=True)


async def _qmp(sock: Path, command: str, arguments: dict[str, object] | None = None) -> Any:
    return await qmp_execute(sock, command, arguments, timeout=QMP_TIMEOUT_S)


async def _resize(sock: Path, vol_id: str, size_bytes: int) -> None:
    """block_resize, once the deleted export has let go of the node: it goes when its
    client's requests are drained, and holds the resize permission until then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_WAIT_S
    while True:
        try:
            await _qmp(sock, "block_resize", {"node-name": fmt_node(vol_id), "size": size_bytes})
            return
        except DriverError as e:
            if "Permission conflict" not in str(e) or loop.time() > deadline:
                raise
        await asyncio.sleep(0.05)


async def _virtual_size(sock: Path, vol_id: str) -> int:
    for n in await _qmp(sock, "query-named-block-nodes", {"flat": True}):
        if n.get("node-name") == fmt_node(vol_id):
            return int(n["image"]["virtual-size"])
    raise DriverError(f"{fmt_node(vol_id)} is not open")
