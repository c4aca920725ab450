"""VolumeStore: qcow2 volume and snapshot files, made atomically (temp name, then rename)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cumulo.agent.storage.disks import StorageError
from cumulo.agent.storage.volumes import GIB, VolumeStore, virtual_size

VOL = "vol-0123456789abcdef0"
VOL2 = "vol-00000000000000002"
SNAP = "snap-0123456789abcdef0"


def info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    result: dict[str, object] = json.loads(out)
    return result


def leftovers(store: VolumeStore) -> list[str]:
    return sorted(p.name for d in (store.volumes_dir, store.snapshots_dir) for p in d.iterdir())


async def test_create_is_a_qcow2_of_the_size_and_idempotent(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    await store.create_volume(VOL, 2)
    path = store.volume_path(VOL)
    assert path == tmp_path / "volumes" / f"{VOL}.qcow2"
    assert info(path)["format"] == "qcow2"
    assert store.volume_size(VOL) == 2 * GIB == virtual_size(path)
    before = path.stat().st_ino
    await store.create_volume(VOL, 5)  # exists: untouched
    assert path.stat().st_ino == before and store.volume_size(VOL) == 2 * GIB
    assert leftovers(store) == [f"{VOL}.qcow2"]


async def test_grow_never_shrinks(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    await store.create_volume(VOL, 1)
    await store.grow_volume(VOL, 3)
    assert store.volume_size(VOL) == 3 * GIB
    await store.grow_volume(VOL, 2)
    assert store.volume_size(VOL) == 3 * GIB


async def test_snapshot_is_standalone_and_a_volume_is_made_from_it(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    await store.create_volume(VOL, 1)
    data = b"cumulo" * 1000
    subprocess.run(["qemu-io", "-c", f"write -P 0x5a 1M {len(data)}", str(store.volume_path(VOL))],
                   check=True, capture_output=True)  # fmt: skip
    await store.snapshot_volume(VOL, SNAP)
    snap = store.snapshot_path(SNAP)
    assert "backing-filename" not in info(snap) and store.snapshot_size(SNAP) == GIB
    await store.create_volume(VOL2, 4, source_snapshot=SNAP)
    assert store.volume_size(VOL2) == 4 * GIB
    assert "backing-filename" not in info(store.volume_path(VOL2))
    r = subprocess.run(["qemu-io", "-c", f"read -P 0x5a 1M {len(data)}",
                        str(store.volume_path(VOL2))], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout
    store.delete_snapshot(SNAP)  # the volume does not depend on it
    assert not snap.exists() and store.volume_size(VOL2) == 4 * GIB
    store.delete_volume(VOL)
    store.delete_volume(VOL)  # idempotent
    assert leftovers(store) == [f"{VOL2}.qcow2"]


async def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    with pytest.raises(StorageError, match="not on this host"):
        await store.create_volume(VOL, 1, source_snapshot=SNAP)
    store.snapshot_path(SNAP).write_bytes(b"not a qcow2 image at all")
    with pytest.raises(StorageError, match="qemu-img failed"):
        await store.create_volume(VOL, 1, source_snapshot=SNAP)
    with pytest.raises(StorageError):
        await store.create_volume(VOL, 0)
    assert leftovers(store) == [f"{SNAP}.qcow2"]
    with pytest.raises(StorageError, match="not on this host"):
        await store.snapshot_volume(VOL, "snap-00000000000000009")


def test_ids_are_validated_before_becoming_paths(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    for bad in ("../../etc/passwd", "vol-xyz", "vol-0123456789abcdef0/..", "", SNAP):
        with pytest.raises(StorageError, match="malformed"):
            store.volume_path(bad)
    with pytest.raises(StorageError, match="malformed"):
        store.snapshot_path(VOL)


def test_stale_temporaries_are_removed_on_open(tmp_path: Path) -> None:
    (tmp_path / "volumes").mkdir()
    (tmp_path / "volumes" / f"{VOL}.qcow2.tmp").write_bytes(b"half")
    (tmp_path / "volumes" / f"{VOL2}.qcow2").write_bytes(b"kept")
    store = VolumeStore(tmp_path)
    assert leftovers(store) == [f"{VOL2}.qcow2"]
    with pytest.raises(StorageError, match="not a qcow2"):
        store.volume_size(VOL2)
