"""Kill, by pid, the QEMU processes a contract test started (never anyone else's)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from cumulo.agent.drivers.qemu_cgroup import VmCgroups


def kill_all(runtime: Path) -> None:
    """Kill (by pid) every QEMU this test started; only pids whose cmdline names our dir."""
    for pidfile in runtime.glob("*/qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if os.fsencode(pidfile) in cmdline.split(b"\0"):
                os.kill(pid, signal.SIGKILL)
                wait_pid_gone(pid)
    groups = VmCgroups.for_runtime(runtime.absolute())
    for vm_dir in runtime.glob("*/"):
        groups.remove(vm_dir.name, wait_s=5.0)  # the VM's cgroups, once its QEMU has left


def wait_pid_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            return
        time.sleep(0.02)
