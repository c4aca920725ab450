"""Small whole-disk images for tests, written byte by byte (no partitioning tool on the host,
no internet for a real cloud image): a GPT disk as cloud images are (protective MBR, primary
header and entries, backup entries and header at the end), an MBR disk, and a reader of a
GPT's headers to check what a deploy left."""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SECTOR = 512
LINUX_FS = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_ENTRIES = 128


def _mbr_entry(status: int, ptype: int, start: int, count: int) -> bytes:
    return struct.pack("<B3sB3sII", status, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", start,
                       count)


def mbr_sector(entries: list[tuple[int, int, int]]) -> bytes:
    """A first sector with these (type, start, count) partitions (first one bootable)."""
    table = b"".join(_mbr_entry(0x80 if i == 0 else 0, *e) for i, e in enumerate(entries))
    return bytes(446) + table.ljust(64, b"\0") + b"\x55\xaa"


def _gpt_header(sectors: int, current: int, backup: int, entries_lba: int,
                entries_crc: int) -> bytes:
    fields = [b"EFI PART", 0x10000, 92, 0, 0, current, backup, 34, sectors - 34,
              uuid.UUID(int=0x1234).bytes_le, entries_lba, _ENTRIES, 128, entries_crc]
    h = _HEADER.pack(*fields)
    fields[3] = zlib.crc32(h)
    return _HEADER.pack(*fields).ljust(SECTOR, b"\0")


def write_gpt_disk(path: Path, size: int, partitions: list[tuple[int, int]]) -> None:
    """A sparse raw disk of `size` bytes with a GPT of Linux partitions (start, count)."""
    sectors = size // SECTOR
    entries = b"".join(
        _ENTRY.pack(LINUX_FS.bytes_le, uuid.UUID(int=i + 1).bytes_le, start, start + n - 1, 0,
                    f"p{i + 1}".encode("utf-16-le"))
        for i, (start, n) in enumerate(partitions)).ljust(_ENTRIES * 128, b"\0")
    crc = zlib.crc32(entries)
    with path.open("wb") as f:
        f.truncate(size)
        f.write(mbr_sector([(0xEE, 1, sectors - 1)]))
        f.write(_gpt_header(sectors, 1, sectors - 1, 2, crc))
        f.write(entries)
        f.seek((sectors - 33) * SECTOR)
        f.write(entries)
        f.write(_gpt_header(sectors, sectors - 1, 1, sectors - 33, crc))


@dataclass(frozen=True)
class Gpt:
    current: int
    backup: int
    last_usable: int
    partitions: list[tuple[int, int]]  # (first, last) sector
    header_ok: bool  # its CRC and its entries' CRC check out


def read_gpt(f: BinaryIO, lba: int) -> Gpt:
    """The GPT header at sector `lba` of the open raw disk `f`, and its partitions."""
    f.seek(lba * SECTOR)
    raw = f.read(SECTOR)
    h = list(_HEADER.unpack_from(raw))
    assert h[0] == b"EFI PART", f"no GPT header at sector {lba}"
    crc, h[3] = h[3], 0
    f.seek(h[10] * SECTOR)
    entries = f.read(h[11] * h[12])
    parts = [(e[2], e[3]) for e in _ENTRY.iter_unpack(entries) if e[0] != bytes(16)]
    ok = zlib.crc32(_HEADER.pack(*h)) == crc and zlib.crc32(entries) == h[13]
    return Gpt(h[5], h[6], h[8], parts, ok)


def to_qcow2(raw: Path, qcow2: Path) -> None:
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(qcow2)], check=True, timeout=60)
