"""The whole-disk form of an imported image, for bare-metal nodes.

An imported image (kept in the image store as qcow2: services.image_import) deploys on bare
metal only if it is a whole disk already, as cloud images are: a partition table (MBR, or GPT
behind its protective MBR) and, we trust, a boot loader. A bare file system (an image for
kernel boot, like tiny's root) has none and is refused with the reason. Recognition reads
the first two sectors of the image's content (`qemu-img dd`, the format pinned): the MBR's
signature and entries (each with a boot flag of 0 or 0x80, a type, a start and a size within
the disk: a FAT or NTFS boot sector also ends in 55 AA, but its code fails these), and for
GPT the header in sector 1 (signature and CRC).

The form, `<cache>/<sha16>.<digest16>/disk.raw.gz`, is the image's raw content gzipped,
built once per image content (its sha256) and kept; `build.json` has its sha256.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
import zlib
from pathlib import Path

from cumulo.images import cached_build, wholedisk
from cumulo.images.cached_build import run
from cumulo.images.debs import ImageBuildError

BUILDER_VERSION = 1
SECTOR = 512
FILES = ("disk.raw.gz",)
_GPT_PROTECTIVE = 0xEE


class NotWholeDisk(ValueError):
    """The image is no whole disk (the message says why)."""


def partition_table(head: bytes, sectors: int) -> str:
    """"gpt" or "mbr": the partition table that the disk of `sectors` sectors starting with
    `head` (its first two sectors at least) has. NotWholeDisk says why it has none."""
    if len(head) < 2 * SECTOR:
        raise NotWholeDisk("it has no partition table (it is smaller than two sectors)")
    if head[510:512] != b"\x55\xaa":
        raise NotWholeDisk("it has no partition table (no MBR signature in its first sector: "
                           "a bare file system?)")
    entries = [struct.unpack_from("<B3sB3sII", head, 446 + 16 * i) for i in range(4)]
    used = [e for e in entries if e[2] != 0]
    if (any(e[0] not in (0, 0x80) for e in entries) or not used
            or any(e[4] == 0 or e[5] == 0 or e[4] + e[5] > sectors for e in used
                   if e[2] != _GPT_PROTECTIVE)):
        raise NotWholeDisk("it has no partition table (its first sector lists no partition "
                           "within the disk: a boot sector of a bare file system?)")
    if not any(e[2] == _GPT_PROTECTIVE for e in used):
        return "mbr"
    header = head[SECTOR:2 * SECTOR]
    size, crc = struct.unpack_from("<II", header, 12)
    if header[:8] != b"EFI PART" or not 92 <= size <= SECTOR:
        raise NotWholeDisk("it has no partition table (a protective MBR with no GPT header "
                           "after it)")
    if zlib.crc32(header[:16] + bytes(4) + header[20:size]) != crc:
        raise NotWholeDisk("it has no valid partition table (its GPT header's CRC is wrong)")
    return "gpt"


def head_of(disk: Path, fmt: str) -> bytes:
    """The first two sectors of the content of the image `disk` (read as `fmt`)."""
    with tempfile.TemporaryDirectory(prefix="cumulo-head-") as tmp:
        out = Path(tmp) / "head.raw"
        run(["qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={SECTOR}", "count=2",
             f"if={disk}", f"of={out}"])
        return out.read_bytes()


def check(disk: Path, fmt: str, virtual_size: int) -> str:
    """The partition table of the image `disk` ("gpt", "mbr"); NotWholeDisk if none."""
    return partition_table(head_of(disk, fmt), virtual_size // SECTOR)


def ensure_imported_disk(disk: Path, sha256: str, cache: Path) -> Path:
    """Build (or reuse) the whole-disk form of the qcow2 image `disk` whose sha256 is
    `sha256`, under `cache`; returns its directory. NotWholeDisk if it is no whole disk."""
    digest = hashlib.sha256(json.dumps(
        {"builder_version": BUILDER_VERSION, "image_sha256": sha256}).encode()).hexdigest()

    def build(work: Path, out: Path) -> dict[str, object]:
        raw = work / "disk.raw"
        run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(raw)])
        with raw.open("rb") as f:  # what is written is what was recognised
            table = partition_table(f.read(2 * SECTOR), raw.stat().st_size // SECTOR)
        facts = {"name": "imported-disk", "image_sha256": sha256, "partition_table": table,
                 **wholedisk.gzip_raw(raw, out / "disk.raw.gz")}
        raw.unlink()
        return facts

    if len(sha256) != 64:
        raise ImageBuildError(f"the image's sha256 {sha256!r} is not one")
    return cached_build.ensure_built(cache, sha256[:16], digest, FILES, build)
