"""One agent per host, and a supervised agent that dies with its supervisor.

Two agents on one host would both act on the same VMs: each re-adopts the other's QEMU
processes as its own, and both start, stop and destroy them, serve the console socket and
report. That happened when `cumulo up` was killed (SIGKILL, the OOM killer): its agent
outlived it, and the next `cumulo up` started a second one. So an agent holds an exclusive
lock on `<host_dir>/agent.lock` for as long as it runs. The kernel releases the lock when
the process dies, however it dies, so a lock file left behind never blocks a restart.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from cumulo.pidlock import PidLock

log = structlog.get_logger("cumulo.agent")

LOCK_NAME = "agent.lock"
# How long a new agent (or `cumulo down`) waits for the host's agent to stop: `cumulo up`'s
# own stop gives its agent 10 s, and an agent's shutdown waits up to 5 s for its console
# server.
LOCK_WAIT_S = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class HostBusy(Exception):
    """Another live agent holds this host's lock."""


class HostLock(PidLock):
    """Holds `<host_dir>/agent.lock` until `release` (or until the process ends)."""

    def __init__(self, host_dir: Path) -> None:
        super().__init__(host_dir / LOCK_NAME)

    async def acquire(self, wait_s: float, stop: asyncio.Event) -> None:
        """Take the lock, waiting up to `wait_s` for a previous agent to finish stopping.

        Raises HostBusy if it is still held then; returns early (without the lock) if `stop`
        is set meanwhile: the caller checks `held`."""
        if self.try_acquire():
            return
        log.warning("host_lock_busy", pid=self.holder(), lock=str(self.path),
                    hint=f"waiting up to {wait_s:.0f} s for it to stop")
        if not await self.wait_acquire(wait_s, stop) and not stop.is_set():
            raise HostBusy(f"another agent runs for this host (pid {self.holder() or '?'}, "
                           f"lock {self.path})")


def exit_with_parent(parent_pid: int) -> bool:
    """Have the kernel send this process SIGTERM when its parent dies; False if it already has.

    For the agent `cumulo up` supervises: if `cumulo up` is killed, its agent stops too (the
    VMs do not: QEMU runs in its own session), instead of living on beside the agent of the
    next `cumulo up`. The signal comes when the parent *thread* that forked us ends, so the
    supervisor spawns the agent from its main thread. Checked against `parent_pid` after
    setting it, because the parent may have died before.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return os.getppid() == parent_pid


def run_supervised(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
                   parent_pid: int | None) -> bool:
    """Run `main(stop)` until it returns; SIGTERM and SIGINT set `stop`. `parent_pid`: the
    supervising process (`cumulo up`): this one stops when it dies, and runs nothing (False)
    when it is gone already."""
    if parent_pid is not None and not exit_with_parent(parent_pid):
        log.warning("supervisor_gone", parent_pid=parent_pid, hint="not starting")
        return False

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(_run())
    return True
