"""The sha256 of image files: recorded in the catalogue when an image is registered or
imported, and checked by every host that fetches the file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of the file at `path`."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def is_sha256(value: str) -> bool:
    return bool(SHA256_RE.match(value))
