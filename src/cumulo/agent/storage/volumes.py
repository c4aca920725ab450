"""Block volume and snapshot files on one host (for volumes that no running VM holds).

`<host_dir>/volumes/<vol_id>.qcow2` and `<host_dir>/snapshots/<snap_id>.qcow2`, each a
standalone qcow2 (no backing file). Every new file is made under `<name>.tmp` and renamed
into place, so a full disk or a crash never leaves a half-made volume or snapshot behind;
stale temporaries are removed when the store is opened.

Attached volumes are open in QEMU: grow and snapshot them through the driver instead
(qemu-img would refuse anyway: QEMU holds the image lock).
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

from cumulo.agent.storage.disks import StorageError, run_tool
from cumulo.domain.ids import is_id

GIB = 1024**3
_QCOW2_MAGIC = b"QFI\xfb"


class VolumeStore:
    def __init__(self, host_dir: Path) -> None:
        self.volumes_dir = Path(host_dir) / "volumes"
        self.snapshots_dir = Path(host_dir) / "snapshots"
        for d in (self.volumes_dir, self.snapshots_dir):
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob("*.tmp"):
                stale.unlink(missing_ok=True)

    # -- paths ------------------------------------------------------------------------------

    def volume_path(self, vol_id: str) -> Path:
        return self.volumes_dir / f"{_checked(vol_id, 'vol')}.qcow2"

    def snapshot_path(self, snap_id: str) -> Path:
        return self.snapshots_dir / f"{_checked(snap_id, 'snap')}.qcow2"

    @staticmethod
    def temp_path(path: Path) -> Path:
        """Where a new file is made before it is renamed to `path`."""
        return path.with_name(path.name + ".tmp")

    def has_volume(self, vol_id: str) -> bool:
        return self.volume_path(vol_id).is_file()

    def has_snapshot(self, snap_id: str) -> bool:
        return self.snapshot_path(snap_id).is_file()

    # -- volumes ----------------------------------------------------------------------------

    async def create_volume(
        self, vol_id: str, size_gib: int, source_snapshot: str | None = None
    ) -> None:
        """Make the volume (empty, or a standalone copy of the snapshot grown to size_gib).

        A no-op when it exists. Raises StorageError (nothing left behind) on failure.
        """
        path = self.volume_path(vol_id)
        if path.is_file():
            return
        if size_gib <= 0:
            raise StorageError(f"invalid size {size_gib} GiB for {vol_id}")
        tmp = self.temp_path(path)
        tmp.unlink(missing_ok=True)
        try:
            if source_snapshot is None:
                await run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(tmp), f"{size_gib}G")
            else:
                src = self.snapshot_path(source_snapshot)
                if not src.is_file():
                    raise StorageError(f"snapshot {source_snapshot} is not on this host")
                await run_tool("qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2",
                               str(src), str(tmp))  # fmt: skip
                if virtual_size(tmp) < size_gib * GIB:
                    await _resize(tmp, size_gib * GIB)
            await asyncio.to_thread(_fsync_file, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def volume_size(self, vol_id: str) -> int:
        """The volume's virtual size in bytes."""
        return virtual_size(self.volume_path(vol_id))

    async def grow_volume(self, vol_id: str, size_gib: int) -> None:
        """Grow a detached volume to size_gib (never shrinks: a smaller size is a no-op)."""
        path = self.volume_path(vol_id)
        if virtual_size(path) < size_gib * GIB:
            await _resize(path, size_gib * GIB)

    def delete_volume(self, vol_id: str) -> None:
        path = self.volume_path(vol_id)
        self.temp_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    # -- snapshots --------------------------------------------------------------------------

    async def snapshot_volume(self, vol_id: str, snap_id: str) -> None:
        """Copy a detached volume to a new standalone snapshot. A no-op when it exists."""
        dest = self.snapshot_path(snap_id)
        if dest.is_file():
            return
        src = self.volume_path(vol_id)
        if not src.is_file():
            raise StorageError(f"volume {vol_id} is not on this host")
        tmp = self.temp_path(dest)
        tmp.unlink(missing_ok=True)
        try:
            await run_tool("qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2",
                           str(src), str(tmp))  # fmt: skip
            self.commit_snapshot(snap_id)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def commit_snapshot(self, snap_id: str) -> None:
        """Rename a snapshot made at temp_path(snapshot_path(snap_id)) into place."""
        dest = self.snapshot_path(snap_id)
        tmp = self.temp_path(dest)
        _fsync_file(tmp)
        os.replace(tmp, dest)

    def snapshot_size(self, snap_id: str) -> int:
        return virtual_size(self.snapshot_path(snap_id))

    def delete_snapshot(self, snap_id: str) -> None:
        path = self.snapshot_path(snap_id)
        self.temp_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def virtual_size(path: Path) -> int:
    """The virtual size of a qcow2 file, read from its header (cheap enough for every pass)."""
    try:
        with path.open("rb") as f:
            header = f.read(32)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(header) < 32 or header[:4] != _QCOW2_MAGIC:
        raise StorageError(f"{path} is not a qcow2 image")
    return int(struct.unpack(">Q", header[24:32])[0])


async def _resize(path: Path, size_bytes: int) -> None:
    await run_tool("qemu-img", "resize", "-q", "-f", "qcow2", str(path), str(size_bytes))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checked(value: str, prefix: str) -> str:
    """An id that becomes a file name: never trust it blindly."""
    if not is_id(value) or not value.startswith(prefix + "-"):
        raise StorageError(f"refusing malformed {prefix} id {value!r}")
    return value
