"""A minimal, deterministic `newc` cpio writer (the initramfs format), no root needed."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field


@dataclass
class CpioArchive:
    """Entries are written in insertion order; parents must be added before children."""

    _entries: list[tuple[str, int, bytes, int, int]] = field(default_factory=list)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._entries.append((path, stat.S_IFDIR | mode, b"", 0, 0))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entries.append((path, stat.S_IFREG | mode, data, 0, 0))

    def add_symlink(self, path: str, target: str) -> None:
        self._entries.append((path, stat.S_IFLNK | 0o777, target.encode(), 0, 0))

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entries.append((path, stat.S_IFCHR | mode, b"", major, minor))

    def to_bytes(self) -> bytes:
        out = bytearray()
        ino = 1
        for path, mode, data, rmaj, rmin in [*self._entries, ("TRAILER!!!", 0, b"", 0, 0)]:
            name = path.lstrip("/").encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(mode) else 1
            fields = (
                ino if path != "TRAILER!!!" else 0,
                mode,
                0,  # uid
                0,  # gid
                nlink if path != "TRAILER!!!" else 1,
                0,  # mtime
                len(data),
                0,  # dev major
                0,  # dev minor
                rmaj,
                rmin,
                len(name),
                0,  # check
            )
            out += b"070701" + b"".join(b"%08X" % f for f in fields)
            out += name
            out += b"\0" * (-len(out) % 4)
            out += data
            out += b"\0" * (-len(out) % 4)
            ino += 1
        out += b"\0" * (-len(out) % 512)
        return bytes(out)
