"""Fetch one image file from the API into the host's cache, whole and checked.

Bytes go to `<file>.part`; an interrupted transfer is resumed with an HTTP range (If-Range:
the file's sha256, so that a file that changed on the API side comes whole again). Once the
size is reached the sha256 is checked: a mismatch removes the part and fetches again from the
start; a match makes the file read-only and renames it into place. Nothing but a complete,
checked file ever has the final name, so no VM boots a partial or corrupt one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import structlog

from cumulo.agent.storage.disks import StorageError
from cumulo.images.digest import file_digest
from cumulo.protocol import ImageFile

log = structlog.get_logger("cumulo.agent")

ATTEMPTS = 4  # transfers per fetch (resumed or restarted) before the fetch fails
BATCH = 1 << 20  # bytes written to disk at once, off the event loop

# (image id, role, offset, sha256) -> the response to GET .../images/ID/ROLE from `offset`
FileSource = Callable[[str, str, int, str], AbstractAsyncContextManager[httpx.Response]]


async def fetch_file(source: FileSource, image_id: str, role: str, want: ImageFile,
                     dest: Path) -> None:
    """Make `dest` the checked file `want` of image `image_id`; raises StorageError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    why = "no attempt made"
    for attempt in range(1, ATTEMPTS + 1):
        offset = part.stat().st_size if part.exists() else 0
        if offset > want.size:
            part.unlink()
            offset = 0
        try:
            await _transfer(source, image_id, role, want, part, offset)
        except (httpx.TransportError, _Refused) as e:
            why = str(e) or type(e).__name__
            log.warning("image_transfer_interrupted", image_id=image_id, file=role,
                        attempt=attempt, have=_size(part), error=why)
            if isinstance(e, _Refused) and e.final:
                break
            continue
        size, sha = await asyncio.to_thread(file_digest, part)
        if size == want.size and sha == want.sha256:
            os.chmod(part, 0o444)
            os.replace(part, dest)
            log.info("image_file_fetched", image_id=image_id, file=role, size=size)
            return
        why = (f"got {size} bytes with sha256 {sha[:12]}…, the catalogue says "
               f"{want.size} bytes with sha256 {want.sha256[:12]}…")
        log.warning("image_file_corrupt", image_id=image_id, file=role, attempt=attempt,
                    detail=why)
        part.unlink(missing_ok=True)  # never resumed from: fetched whole again
    raise StorageError(f"cannot fetch the {role} of image {image_id}: {why}")


class _Refused(Exception):
    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final  # another attempt would be refused too


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def _transfer(source: FileSource, image_id: str, role: str, want: ImageFile,
                    part: Path, offset: int) -> None:
    async with source(image_id, role, offset, want.sha256) as r:
        if r.status_code == 416:  # the part is not a prefix of this file: start again
            part.unlink(missing_ok=True)
            raise _Refused("the API refused the range; starting again", final=False)
        if r.status_code == 206:
            start = _range_start(r.headers.get("content-range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Refused(f"asked for bytes from {offset}, got {start}", final=False)
        elif r.status_code == 200:
            offset = 0  # the whole file (no range asked, or the file changed)
        else:
            await r.aread()
            raise _Refused(f"the API answered HTTP {r.status_code}: {_detail(r)}",
                           final=r.status_code in (401, 403, 404))
        await _write(part, offset, r.aiter_bytes())


async def _write(part: Path, offset: int, chunks: AsyncIterator[bytes]) -> None:
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as f:
        f.truncate(offset)
        f.seek(offset)
        batch = bytearray()
        try:
            async for chunk in chunks:
                batch += chunk
                if len(batch) >= BATCH:
                    await asyncio.to_thread(f.write, bytes(batch))
                    batch.clear()
        finally:  # what arrived is kept, to resume from
            if batch:
                await asyncio.to_thread(f.write, bytes(batch))
            with contextlib.suppress(OSError):
                f.flush()
                os.fsync(f.fileno())


def _range_start(content_range: str) -> int:
    """The first byte of `bytes START-END/SIZE`; -1 when unreadable."""
    try:
        return int(content_range.removeprefix("bytes ").split("-", 1)[0])
    except ValueError:
        return -1


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", ""))[:200]
    except ValueError:
        return r.text[:200]
