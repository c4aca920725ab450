"""The digest of a disk's content, the same for any two disks whose guest sees the same bytes
(whatever their format, backing chain or allocation): how a cold move checks that the copy
is the disk it was sent.

`sha256:` over the virtual size, then (offset, block) of every BLOCK-aligned block that is not
all zeros, in order. The disk is first converted to a sparse raw file beside it (qemu-img
reads any chain), whose holes are skipped without reading: a mostly empty disk costs about
what it holds, not its virtual size.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from cumulo.agent.drivers.base import DriverError

BLOCK = 64 * 1024
_ZERO = bytes(BLOCK)


async def content_digest(disk: Path) -> str:
    """The digest of `disk` (qcow2 or raw: qemu-img probes the format of a file it made)."""
    size = await virtual_size(disk)
    raw = disk.with_name(disk.name + ".digest.raw")
    raw.unlink(missing_ok=True)
    try:
        await _tool("qemu-img", "convert", "-U", "-O", "raw", str(disk), str(raw))
        return await asyncio.to_thread(raw_digest, raw, size)
    finally:
        raw.unlink(missing_ok=True)


async def virtual_size(disk: Path) -> int:
    out = await _tool("qemu-img", "info", "-U", "--output=json", str(disk))
    try:
        return int(json.loads(out)["virtual-size"])
    except (ValueError, KeyError, TypeError):
        raise DriverError(f"qemu-img info {disk}: no virtual size in its answer") from None


def raw_digest(raw: Path, size: int) -> str:
    """The digest of a raw file holding `size` bytes of content (shorter: zeros after)."""
    h = hashlib.sha256(size.to_bytes(8, "big"))
    with raw.open("rb") as f:
        for offset in _data_blocks(f.fileno(), min(size, os.fstat(f.fileno()).st_size)):
            want = min(BLOCK, size - offset)
            block = os.pread(f.fileno(), want, offset)
            block += bytes(want - len(block))  # past the file's end: zeros
            if block != _ZERO[:len(block)]:
                h.update(offset.to_bytes(8, "big"))
                h.update(block)
    return "sha256:" + h.hexdigest()


def _data_blocks(fd: int, end: int) -> list[int]:
    """The BLOCK-aligned offsets below `end` that SEEK_DATA says may hold data."""
    out: list[int] = []
    pos = 0
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        first = max(start // BLOCK * BLOCK, out[-1] + BLOCK if out else 0)
        out.extend(range(first, stop, BLOCK))
        pos = stop
    return out


async def _tool(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"{argv[0]} {argv[1]} failed: {err.decode(errors='replace').strip()}")
    return out.decode()
