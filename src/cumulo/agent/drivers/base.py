"""The hypervisor driver contract.

A driver runs virtual machines on one host. The agent's reconciler calls it; the driver never
talks to the API or the database. Every call is idempotent (calling it twice has the effect of
calling it once) so a reconciler that crashed half-way can simply call again.

The same contract suite (tests/contract) runs against every driver: the QEMU driver (real VMs)
and the fake driver (control-plane scale tests).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cumulo.domain.arch import Arch


@dataclass(frozen=True)
class NicSpec:
    """A virtio-net NIC backed by a tap device that QEMU creates inside `VMSpec.netns`."""

    tap: str  # interface name (<= 15 bytes), derived from the vm id by cumulo.agent.net
    mac: str


@dataclass(frozen=True)
class VMSpec:
    """Everything a driver needs to run one VM. Paths are already validated and owned by cumulo."""

    vm_id: str  # e.g. "i-0123456789abcdef0"; safe for paths (validated by the caller)
    hostname: str  # a DNS label
    arch: Arch
    vcpus: int
    ram_mib: int
    boot_disk: Path  # qcow2 file the driver boots from (read-write)
    kernel: Path | None = None  # direct kernel boot when set
    initrd: Path | None = None
    kernel_cmdline: str = ""
    seed_iso: Path | None = None  # cloud-init NoCloud seed (cidata), attached read-only
    netns: str | None = None  # the host's network namespace; QEMU runs inside it when set
    nics: tuple[NicSpec, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


class PowerState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # guest powered itself off; process still there until cleaned up
    STOPPED = "stopped"  # no process; stopped because cumulo asked for it
    CRASHED = "crashed"  # no process, and nobody asked it to stop


@dataclass(frozen=True)
class Observed:
    """What the driver sees for one VM. `reason` explains STOPPED/CRASHED in one line."""

    vm_id: str
    power: PowerState
    pid: int | None = None
    reason: str = ""


class DriverError(Exception):
    """The hypervisor refused or failed an operation; the message is shown to the operator."""


class Driver(abc.ABC):
    """One hypervisor host's VMs. Implementations keep per-VM runtime files under their own dir."""

    name: str

    @abc.abstractmethod
    async def observe(self) -> dict[str, Observed]:
        """Every VM this driver has runtime state for (running or not), keyed by vm_id."""

    @abc.abstractmethod
    async def start(self, spec: VMSpec) -> Observed:
        """Ensure the VM's process runs. A no-op when it already runs."""

    @abc.abstractmethod
    async def request_shutdown(self, vm_id: str) -> None:
        """Ask the guest to power off (ACPI). Returns at once; the reconciler checks later."""

    @abc.abstractmethod
    async def force_stop(self, vm_id: str) -> None:
        """Stop the VM's process now (power cut). A no-op when it is not running."""

    @abc.abstractmethod
    async def reboot(self, vm_id: str) -> None:
        """Reset the running VM. Raises DriverError when it does not run."""

    @abc.abstractmethod
    async def destroy(self, vm_id: str) -> None:
        """Force-stop and remove every runtime file of the VM. A no-op when absent."""

    @abc.abstractmethod
    async def console_log(self, vm_id: str, max_bytes: int = 64 * 1024) -> str:
        """The tail of the VM's serial console output (survives restarts of the VM)."""
