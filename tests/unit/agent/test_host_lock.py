"""One agent per host (agent/host_lock.py): the lock, and the supervised agent's end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cumulo.agent.host_lock import HostBusy, HostLock
from cumulo.agent.main import AgentConfig, run_agent
from tests.conftest import running

_HOLD = """
import sys, time
from pathlib import Path
from cumulo.agent.host_lock import HostLock
assert HostLock(Path(sys.argv[1])).try_acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still alive")
        time.sleep(0.05)


async def test_a_second_agent_waits_then_refuses_naming_the_first(tmp_path: Path) -> None:
    first = HostLock(tmp_path)
    assert first.try_acquire()
    second = HostLock(tmp_path)
    with pytest.raises(HostBusy, match=rf"another agent runs for this host \(pid {os.getpid()},"):
        await second.acquire(0.3, asyncio.Event())
    assert not second.held
    first.release()
    assert second.try_acquire()


async def test_the_waiting_agent_runs_once_the_first_has_stopped(tmp_path: Path) -> None:
    first = HostLock(tmp_path)
    assert first.try_acquire()
    second = HostLock(tmp_path)
    waiting = asyncio.create_task(second.acquire(10, asyncio.Event()))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    first.release()
    await asyncio.wait_for(waiting, 5)
    assert second.held


async def test_stop_while_waiting_returns_without_the_lock(tmp_path: Path) -> None:
    assert HostLock(tmp_path).try_acquire()
    stop = asyncio.Event()
    second = HostLock(tmp_path)
    waiting = asyncio.create_task(second.acquire(30, stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(waiting, 5)
    assert not second.held


def test_the_lock_of_a_killed_agent_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert not HostLock(tmp_path).try_acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = HostLock(tmp_path)
    assert lock.try_acquire(), "a SIGKILLed holder leaves its lock file, not its lock"
    assert (tmp_path / "agent.lock").read_text() == f"{os.getpid()}\n"


async def test_an_agent_does_nothing_while_another_holds_its_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cumulo.agent.main.LOCK_WAIT_S", 0.3)
    assert HostLock(tmp_path).try_acquire()
    cfg = AgentConfig(api_url="http://127.0.0.1:9", token="t", host_dir=tmp_path,
                      name="h1", zone="z", vcpus=1, ram_mib=512, driver="fake")
    with pytest.raises(HostBusy):
        await run_agent(cfg, asyncio.Event())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.lock"], "it touched nothing"


# A supervisor that starts a child armed with exit_with_parent, then waits. Both write to
# the test's pipe: the child's pid, and "armed" once the child is.
_SUPERVISOR = """
import subprocess, sys, time, os
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(60)
"""
_CHILD = """
import sys, time
from cumulo.agent.host_lock import exit_with_parent
assert exit_with_parent(int(sys.argv[1]))
print("armed", flush=True)
time.sleep(60)
"""


def test_a_supervised_agent_gets_sigterm_when_its_supervisor_is_killed() -> None:
    sup = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, _CHILD],
                           stdout=subprocess.PIPE, text=True)
    assert sup.stdout is not None
    lines = {sup.stdout.readline().strip() for _ in range(2)}
    assert "armed" in lines
    (child,) = (int(x) for x in lines - {"armed"})
    os.kill(child, 0)  # alive while its supervisor is
    sup.kill()
    sup.wait()
    _wait_gone(child)


def test_exit_with_parent_says_when_the_parent_is_already_gone() -> None:
    # In a child process: arming the test runner itself would tie it to its own parent.
    code = ("import os; from cumulo.agent.host_lock import exit_with_parent as e; "
            "print(e(os.getppid()), e(os.getppid() + 1_000_000))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "False"]
