"""An imported image's whole-disk form for bare metal: which images are whole disks (a
partition table, read from the qcow2's content), the form built once per content and kept,
and what a bm1 deploy gets for an imported image (services.baremetal_deploy)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from cumulo.db.tables import ImageRow
from cumulo.domain.errors import InvalidInput
from cumulo.images import imported_disk
from cumulo.services import baremetal_deploy as deploy
from tests.disk_images import mbr_sector, to_qcow2, write_gpt_disk

MIB = 1 << 20


def _qcow2(tmp_path: Path, raw: Path) -> Path:
    out = tmp_path / f"{raw.stem}.qcow2"
    to_qcow2(raw, out)
    return out


def _gpt(tmp_path: Path) -> Path:
    raw = tmp_path / "gpt.raw"
    write_gpt_disk(raw, 8 * MIB, [(2048, 8192)])
    with raw.open("r+b") as f:
        f.seek(2048 * 512)
        f.write(b"root file system" * 64)
    return raw


def _mbr(tmp_path: Path, entries: list[tuple[int, int, int]]) -> Path:
    raw = tmp_path / "mbr.raw"
    with raw.open("wb") as f:
        f.truncate(8 * MIB)
        f.write(mbr_sector(entries))
    return raw


def _check(path: Path) -> str:
    return imported_disk.check(path, "qcow2", 8 * MIB)


def test_gpt_and_mbr_disks_are_whole_disks(tmp_path: Path) -> None:
    assert _check(_qcow2(tmp_path, _gpt(tmp_path))) == "gpt"
    assert _check(_qcow2(tmp_path, _mbr(tmp_path, [(0x83, 2048, 8192)]))) == "mbr"


def test_bare_file_systems_and_broken_tables_are_not_whole_disks(tmp_path: Path) -> None:
    ext4 = tmp_path / "ext4.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext4), "8M"], check=True)
    fat = tmp_path / "fat.raw"  # a FAT boot sector ends in 55 AA too, but lists no partition
    subprocess.run(["mformat", "-i", str(fat), "-C", "-T", "16384", "::"], check=True)
    with fat.open("rb") as f:
        assert f.read(512)[510:] == b"\x55\xaa"
    outside = _mbr(tmp_path, [(0x83, 2048, 32768)])  # beyond the 8 MiB disk
    crc = _gpt(tmp_path)
    with crc.open("r+b") as f:  # a byte of the GPT header changed: its CRC fails
        f.seek(512 + 40)
        f.write(b"\x01")
    for raw, why in ((ext4, "no MBR signature"), (fat, "lists no partition within"),
                     (outside, "lists no partition within"), (crc, "CRC is wrong")):
        with pytest.raises(imported_disk.NotWholeDisk, match=why) as e:
            _check(_qcow2(tmp_path, raw))
        assert "partition table" in str(e.value)


def test_the_form_is_the_raw_content_gzipped_built_once_per_content(tmp_path: Path) -> None:
    raw = _gpt(tmp_path)
    image = _qcow2(tmp_path, raw)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    built = imported_disk.ensure_imported_disk(image, sha, cache)
    gz = built / "disk.raw.gz"
    assert gzip.decompress(gz.read_bytes()) == raw.read_bytes()
    facts = json.loads((built / "build.json").read_text())
    assert facts["gz_sha256"] == hashlib.sha256(gz.read_bytes()).hexdigest()
    assert facts["image_sha256"] == sha and facts["partition_table"] == "gpt"
    assert sorted(p.name for p in built.iterdir()) == ["build.json", "disk.raw.gz"]
    stamp = gz.stat().st_mtime_ns
    assert imported_disk.ensure_imported_disk(image, sha, cache) == built  # kept, not rebuilt
    assert gz.stat().st_mtime_ns == stamp
    other = imported_disk.ensure_imported_disk(image, "f" * 64, cache)
    assert other != built and other.name.startswith("f" * 16)


def _row(tmp_path: Path, raw: Path, name: str, arch: str = "x86_64") -> ImageRow:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    disk = _qcow2(store, raw)
    return ImageRow(id="img-1", name=name, project_id="p-1", arch=arch, boot="bios",
                    default_user="debian", disk_path=str(disk),
                    disk_sha256=hashlib.sha256(disk.read_bytes()).hexdigest(),
                    virtual_size_bytes=8 * MIB)


def test_an_imported_whole_disk_deploys_in_its_gzipped_form(tmp_path: Path) -> None:
    raw = _gpt(tmp_path)
    image = _row(tmp_path, raw, "cloud")
    deploy.require_whole_disk(image)
    disk = deploy.whole_disk(image)
    assert disk.path.parent.parent == tmp_path / "store" / deploy.WHOLE_DISKS
    assert gzip.decompress(disk.path.read_bytes()) == raw.read_bytes()
    assert disk.sha256 == hashlib.sha256(disk.path.read_bytes()).hexdigest()


def test_an_image_that_is_no_whole_disk_or_not_x86_64_is_refused_saying_why(
        tmp_path: Path) -> None:
    ext4 = tmp_path / "bare.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext4), "8M"], check=True)
    with pytest.raises(InvalidInput) as e:
        deploy.whole_disk(_row(tmp_path, ext4, "bare"))
    assert e.value.code == "no_whole_disk_image"
    assert str(e.value) == (
        "image 'bare' (x86_64) has no whole-disk form for bare metal: it is no whole disk: it "
        "has no partition table (no MBR signature in its first sector: a bare file system?)")
    with pytest.raises(InvalidInput, match=r"'cloud' \(arm64\) .*only x86_64 images deploy"):
        deploy.require_whole_disk(_row(tmp_path, _gpt(tmp_path), "cloud", "arm64"))
    assert not (tmp_path / "store" / deploy.WHOLE_DISKS).exists()  # nothing built
