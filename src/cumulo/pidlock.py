"""An exclusive lock on a file that also names its holder's pid.

The lock, not the number in the file, says who runs: the kernel releases a `flock` however its
holder dies, so a file left behind by a killed process never blocks the next one, and a pid
that was reused by an unrelated process is never mistaken for the holder.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path


class PidLock:
    """Holds `path` from `try_acquire` until `release` (or until the process ends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        # O_CLOEXEC: children (the agent, QEMU) must not inherit, and so keep, the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    async def wait_acquire(self, wait_s: float, stop: asyncio.Event | None = None) -> bool:
        """Take the lock, waiting up to `wait_s` for its holder to let go; False if it still
        holds it then, or if `stop` was set meanwhile."""
        deadline = time.monotonic() + wait_s
        while not self.try_acquire():
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            await asyncio.sleep(0.1)
        return True

    def holder(self) -> int | None:
        """The pid the holder wrote (meaningful while the lock is held by someone else)."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, unlink: bool = False) -> None:
        """Let go; `unlink` first removes the file (while still holding it)."""
        if self._fd is None:
            return
        if unlink:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None
