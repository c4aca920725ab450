"""`cumulo down`: stop a cloud's processes and VMs; keep disks and the database."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from cumulo.allinone.paths import StatePaths, pid_alive


def _stop_up(paths: StatePaths) -> None:
    try:
        pid = int(paths.pidfile.read_text())
    except (OSError, ValueError):
        return
    if not pid_alive(pid, "cumulo"):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pid_alive(pid, "cumulo") and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid, "cumulo"):
        os.kill(pid, signal.SIGKILL)


async def _stop_vms(run_dir: Path) -> int:
    from cumulo.agent.drivers.base import PowerState
    from cumulo.agent.drivers.qemu import QemuDriver

    driver = QemuDriver(run_dir, accel="tcg")
    observed = await driver.observe()
    alive = [
        o
        for o in observed.values()
        if o.power in (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN)
    ]
    await asyncio.gather(*(driver.force_stop(o.vm_id) for o in alive))
    return len(alive)


async def _teardown_network(host_dir: Path) -> None:
    """Namespace, bridges, taps, dnsmasq: everything the host's data plane made."""
    from cumulo.agent.net.host_network import HostNetwork

    await HostNetwork(host_dir).teardown()


def run(state_dir: Path) -> int:
    """Returns how many VMs were stopped."""
    paths = StatePaths(state_dir)
    _stop_up(paths)
    stopped = 0
    for host_dir in paths.hosts():
        if (host_dir / "run").is_dir():
            stopped += asyncio.run(_stop_vms(host_dir / "run"))
        asyncio.run(_teardown_network(host_dir))
        (host_dir / "agent.sock").unlink(missing_ok=True)
    return stopped
