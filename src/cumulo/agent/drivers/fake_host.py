"""The fake driver's simulated hypervisor (`FakeHost`) and its VMs: what outlives any
`FakeDriver` attached to it, as QEMU processes outlive their agent (see cumulo.agent.drivers.fake).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from cumulo.agent.drivers.base import DriverError, Observed, PowerState, VMSpec, VolumeAttachment
from cumulo.agent.drivers.fake_migration import FakeFabric, FakeMigration
from cumulo.agent.drivers.fake_serial import FakeSerialPort

LIVE = (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN)


class FakeVM:
    __slots__ = ("events", "observed", "ports", "power_off_asked", "shutdown_pending", "spec",
                 "volumes")

    def __init__(self, spec: VMSpec, observed: Observed) -> None:
        self.spec = spec
        self.observed = observed
        self.shutdown_pending = False
        # request_shutdown since its process started (the QEMU driver's stop-requested file)
        self.power_off_asked = False
        self.events: list[str] = []  # "boot", "reset", "poweroff", "kill": console is rendered
        self.volumes: dict[str, VolumeAttachment] = {}  # held by the running process
        self.ports: list[FakeSerialPort] = []  # open serial connections (end with the process)

    def power_off(self, power: PowerState, reason: str) -> None:
        self.shutdown_pending = self.power_off_asked = False
        self.volumes.clear()  # the process is gone, and its disks with it
        self.close_ports()
        self.observed = Observed(self.observed.vm_id, power, None, reason)

    def close_ports(self) -> None:
        for port in self.ports:
            port.vanish()
        self.ports.clear()


@dataclass
class FakeHost:
    """The simulated hypervisor: outlives any FakeDriver that is attached to it."""

    vms: dict[str, FakeVM] = field(default_factory=dict)
    pids: itertools.count[int] = field(default_factory=lambda: itertools.count(10_000))
    # Volume ids whose guest never releases the disk on hot-unplug (tests of the timeout).
    stuck_volumes: set[str] = field(default_factory=set)
    # Host files that cannot be written now (a full disk: see simulate_io_error).
    full_files: set[str] = field(default_factory=set)
    # Network volumes whose storage host does not answer now (see simulate_io_error).
    unreachable: set[str] = field(default_factory=set)
    # The network to other fake hosts (shared by hosts that migrate VMs between them).
    fabric: FakeFabric = field(default_factory=FakeFabric)
    migrations: dict[str, FakeMigration] = field(default_factory=dict)
    # VM ids whose guest dirties memory faster than the link carries it: their outgoing
    # migration copies memory pass after pass and never switches over.
    hot_memory: set[str] = field(default_factory=set)
    # VM ids whose arrival cannot be resumed (QEMU refusing `cont`): finish fails, then
    # gives up (base.FINISH_GIVE_UP_S).
    unresumable: set[str] = field(default_factory=set)
    # VM ids whose cold move's copy arrives with one byte changed (see fake_cold_move).
    corrupt_copies: set[str] = field(default_factory=set)


def running(host: FakeHost, vm_id: str, action: str) -> FakeVM:
    """The VM `vm_id` of `host` if its process runs; else DriverError ("cannot <action>")."""
    vm = host.vms.get(vm_id)
    if vm is None or vm.observed.power not in LIVE:
        raise DriverError(f"cannot {action}: {vm_id} is not running")
    return vm
