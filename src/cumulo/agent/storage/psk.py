"""TLS-PSK key files (`keys.psk`: one `identity:hexkey` line), as QEMU's tls-creds-psk reads
them from the directory it is given: the storage host's export daemon (server) and the
client VM's QEMU (client) each read their own copy; the guest never sees either."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_HEX_KEY = re.compile(r"[0-9a-f]{64}")
KEY_FILE = "keys.psk"


def write_key(directory: Path, identity: str, key: str, uid: int | None = None) -> Path:
    """Write `directory`/keys.psk (0400, owned by `uid`, root when None) atomically."""
    if not _HEX_KEY.fullmatch(key):
        raise ValueError("a TLS-PSK key is 64 lower-case hex digits")
    if not re.fullmatch(r"[a-z0-9-]{1,64}", identity):
        raise ValueError(f"invalid TLS-PSK identity {identity!r}")
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = directory / KEY_FILE
    tmp = directory / (KEY_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    try:
        os.write(fd, f"{identity}:{key}\n".encode())
        os.fsync(fd)
        if uid is not None:
            os.fchown(fd, uid, uid)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def remove_keys(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
