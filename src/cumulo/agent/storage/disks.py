"""Instance boot disks: a qcow2 overlay on the (read-only, shared) image."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class StorageError(Exception):
    pass


async def run_tool(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise StorageError(f"{argv[0]} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


async def ensure_overlay(path: Path, backing: Path, size_gib: int) -> None:
    """Create `path` as a qcow2 overlay of `backing` (size_gib virtual), unless it exists.

    Made under a temporary name and renamed, so a crash never leaves a half-made disk that
    a later pass would boot from.
    """
    if path.exists():
        return
    if not backing.is_file():
        raise StorageError(f"image file {backing} is missing on this host")
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    await run_tool(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        str(backing),
        str(tmp),
        f"{size_gib}G",
    )
    os.replace(tmp, path)
