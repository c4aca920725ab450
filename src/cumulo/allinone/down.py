"""`cumulo down`: stop a cloud's processes and VMs; keep disks and the database."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from cumulo.agent.host_lock import LOCK_WAIT_S, HostBusy, HostLock
from cumulo.allinone.paths import StatePaths, pid_alive
from cumulo.domain.errors import Conflict
from cumulo.pidlock import PidLock


async def _stop_up(paths: StatePaths) -> None:
    """SIGTERM the `cumulo up` that holds this state dir's lock (SIGKILL after 20 s); nothing
    when none does. The lock, not the pid in the file, says whether one runs: the pid of a
    killed `cumulo up` may since belong to another cloud's."""
    lock = PidLock(paths.pidfile)
    if not lock.try_acquire():
        pid = lock.holder()
        if pid is None or not pid_alive(pid, "cumulo"):
            raise Conflict(f"{paths.pidfile} is locked by a process that is not cumulo (pid "
                           f"{pid}); stop it by hand", code="state_dir_busy")
        os.kill(pid, signal.SIGTERM)
        if not await lock.wait_acquire(20):
            os.kill(pid, signal.SIGKILL)
            if not await lock.wait_acquire(5):
                return  # not even SIGKILL freed it yet: the hosts' locks are waited for next
    lock.release(unlink=True)


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


async def _stop_exports(nbd_dir: Path) -> None:
    """The host's NBD export daemons (its volumes attached to other hosts' instances): made
    again by the agent at the next `cumulo up`."""
    if not nbd_dir.is_dir():
        return
    from cumulo.agent.storage.nbd_exports import DaemonExporter

    exporter = DaemonExporter(nbd_dir, "", None)
    for vol in sorted(exporter.exported()):
        await exporter.stop(vol)


async def _teardown_network(host_dir: Path) -> None:
    """Namespace, bridges, taps, dnsmasq: everything the host's data plane made."""
    from cumulo.agent.net.host_network import HostNetwork

    await HostNetwork(host_dir).teardown()


async def _down_host(host_dir: Path) -> int:
    """Stop one host's VMs and data plane, holding its agent lock meanwhile: no agent may
    start a VM while they are stopped. The agent of a `cumulo up` that had to be killed above
    gets SIGTERM from the kernel and may still be finishing a pass."""
    lock = HostLock(host_dir)
    try:
        await lock.acquire(LOCK_WAIT_S, asyncio.Event())
    except HostBusy as e:
        raise Conflict(f"cannot stop host {host_dir.name}: {e}", code="agent_running") from None
    try:
        stopped = await _stop_vms(host_dir / "run") if (host_dir / "run").is_dir() else 0
        await _stop_exports(host_dir / "nbd")
        await _teardown_network(host_dir)
        (host_dir / "agent.sock").unlink(missing_ok=True)
    finally:
        lock.release()
    return stopped


def run(state_dir: Path) -> int:
    """Returns how many VMs were stopped."""
    return asyncio.run(_down(StatePaths(state_dir)))


async def _down(paths: StatePaths) -> int:
    from cumulo.agent.net import namespace
    from cumulo.allinone import baremetal_lab, edge_process, fabric
    from cumulo.edge import echo_gate

    await _stop_up(paths)  # and with it the edge, its child
    stopped = sum([await _down_host(host_dir) for host_dir in paths.hosts()])
    baremetal_lab.stop_leftovers(paths.root)
    await namespace.delete(edge_process.edge_netns(paths))
    await echo_gate.remove_table(edge_process.edge_netns(paths))  # left by a killed edge
    await fabric.teardown(paths.root)
    return stopped
