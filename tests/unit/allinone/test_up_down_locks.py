"""One `cumulo up` per state dir, and `cumulo down` stopping only what runs from it (the locks
of pidlock.py, agent/host_lock.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cumulo.agent.host_lock import HostLock
from cumulo.allinone import down, up
from cumulo.allinone.paths import StatePaths
from cumulo.domain.errors import Conflict
from cumulo.pidlock import PidLock

# A stand-in for `cumulo up` ("cumulo" in its command line): it holds up.pid's lock if told
# to, says so, and ends on SIGTERM.
_STAND_IN = """
import sys, time
from pathlib import Path
from cumulo.pidlock import PidLock
if sys.argv[2] == "lock":
    assert PidLock(Path(sys.argv[1])).try_acquire()
print("ready", flush=True)
time.sleep(60)
"""


def _stand_in(pidfile: Path, lock: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _STAND_IN, str(pidfile),
                             "lock" if lock else "no", "cumulo"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_up_refuses_a_state_dir_another_up_holds_and_changes_nothing(tmp_path: Path) -> None:
    held = PidLock(StatePaths(tmp_path).pidfile)
    assert held.try_acquire()
    with pytest.raises(Conflict, match=rf"a cloud already runs from .* \(pid {os.getpid()}\)") as e:
        up.run(tmp_path, port=9)
    assert e.value.code == "already_running"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.pid"]


def test_down_never_signals_the_stale_pid_of_a_killed_up(tmp_path: Path) -> None:
    # `cumulo up` was SIGKILLed and its pid now belongs to another process whose command line
    # says "cumulo" (another cloud's `cumulo up`): before, `cumulo down` sent it SIGTERM.
    pidfile = StatePaths(tmp_path).pidfile
    other = _stand_in(tmp_path / "elsewhere.pid", lock=False)
    try:
        pidfile.write_text(f"{other.pid}\n")
        assert down.run(tmp_path) == 0
        time.sleep(0.2)
        assert other.poll() is None, "another process was signalled"
        assert not pidfile.exists()
    finally:
        other.kill()
        other.wait()


def test_down_stops_the_up_that_holds_the_state_dir(tmp_path: Path) -> None:
    pidfile = StatePaths(tmp_path).pidfile
    running = _stand_in(pidfile, lock=True)
    try:
        assert down.run(tmp_path) == 0
        assert running.wait(timeout=10) == -signal.SIGTERM
        assert not pidfile.exists()
    finally:
        running.kill()
        running.wait()


def test_down_stops_a_host_only_once_its_agent_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(down, "LOCK_WAIT_S", 0.3)
    host = tmp_path / "hosts" / "local"
    host.mkdir(parents=True)
    (host / "agent.sock").touch()
    agent = HostLock(host)
    assert agent.try_acquire()
    with pytest.raises(Conflict, match="cannot stop host local: another agent runs") as e:
        down.run(tmp_path)
    assert e.value.code == "agent_running"
    assert (host / "agent.sock").exists(), "nothing was torn down"

    agent.release()
    assert down.run(tmp_path) == 0
    assert not (host / "agent.sock").exists()
    assert HostLock(host).try_acquire(), "down let go of the host"
