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

from cumulo.agent.drivers.serial import SerialPort
from cumulo.domain.arch import Arch
from cumulo.domain.disk_errors import DiskIoError, WriteErrorPolicy


@dataclass(frozen=True)
class NicSpec:
    """A virtio-net NIC backed by a tap device that QEMU creates inside `VMSpec.netns`."""

    tap: str  # interface name (<= 15 bytes), derived from the vm id by cumulo.agent.net
    mac: str


@dataclass(frozen=True)
class VolumeAttachment:
    """A block volume (a standalone qcow2 file) given to a VM as a virtio disk.

    The guest sees it as /dev/vdX with the disk serial `serial` (the volume id without its
    dash: "vol0123456789abcdef0", the 20 bytes virtio-blk carries; EBS on NVMe does the same).
    `iops` and `mbps` (MiB/s) cap its I/O through QEMU throttling; 0 means no cap.
    `write_error`: a write the host cannot do pauses the VM ("stop") or fails in the guest.
    """

    volume_id: str  # "vol-<17 hex>" (validated by the caller)
    path: Path
    iops: int = 0
    mbps: int = 0
    write_error: WriteErrorPolicy = "stop"

    @property
    def serial(self) -> str:
        return self.volume_id.replace("-", "")


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
    volumes: tuple[VolumeAttachment, ...] = ()  # cold-attached at boot (hot-unpluggable)
    boot_write_error: WriteErrorPolicy = "stop"  # see VolumeAttachment.write_error


class PowerState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # guest powered itself off; process still there until cleaned up
    STOPPED = "stopped"  # no process; stopped because cumulo asked for it
    CRASHED = "crashed"  # no process, and nobody asked it to stop


@dataclass(frozen=True)
class Observed:
    """What the driver sees for one VM. `reason` explains STOPPED/CRASHED/PAUSED in one line;
    `io_errors`: the disks whose failed writes paused it."""

    vm_id: str
    power: PowerState
    pid: int | None = None
    reason: str = ""
    io_errors: tuple[DiskIoError, ...] = ()


class DriverError(Exception):
    """The hypervisor refused or failed an operation; the message is shown to the operator."""


class DetachTimeout(DriverError):
    """The guest did not release a hot-unplugged disk in time; the volume is still attached."""


# Hot-plug slots per VM (PCIe root ports): at most this many volumes are attached at once.
MAX_VOLUMES = 8


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
        """Ask the guest to power off (ACPI), resuming it if it is paused (a paused guest
        cannot see the request). Returns at once; the reconciler checks later."""

    @abc.abstractmethod
    async def force_stop(self, vm_id: str) -> None:
        """Stop the VM's process now (power cut). A no-op when it is not running."""

    @abc.abstractmethod
    async def reboot(self, vm_id: str) -> None:
        """Reset the VM, and let it run if it was paused. Raises DriverError when it does not
        run."""

    @abc.abstractmethod
    async def resume(self, vm_id: str) -> None:
        """Let a paused VM run again (its failed writes are retried: if they fail again, it
        pauses again). Raises DriverError when it does not run."""

    @abc.abstractmethod
    async def destroy(self, vm_id: str) -> None:
        """Force-stop and remove every runtime file of the VM. A no-op when absent."""

    @abc.abstractmethod
    async def console_log(self, vm_id: str, max_bytes: int = 64 * 1024) -> str:
        """The tail of the VM's serial console output (survives restarts of the VM)."""

    @abc.abstractmethod
    async def open_serial(self, vm_id: str) -> SerialPort:
        """A connection to the running VM's serial port (one at a time: see SerialHub).

        Raises DriverError when the VM does not run or its port cannot be opened."""

    # -- block volumes ----------------------------------------------------------------------
    # A volume is attached to a running VM only: a stopped VM gets its volumes at the next
    # start through `VMSpec.volumes`. What is attached is asked of the hypervisor every time
    # (a new driver sees the attachments a previous one made).

    @abc.abstractmethod
    async def attach_volume(self, vm_id: str, att: VolumeAttachment) -> None:
        """Hot-plug the volume into the running VM. A no-op when already attached to it.

        Raises DriverError when the VM does not run or has no free slot (MAX_VOLUMES).
        """

    @abc.abstractmethod
    async def detach_volume(self, vm_id: str, volume_id: str, timeout_s: float) -> None:
        """Hot-unplug the volume and wait until the guest has released it.

        A no-op when the volume is not attached (or the VM does not run). Raises DetachTimeout
        when the guest has not released the disk within `timeout_s`: the volume then stays
        attached (the unplug request stays pending; calling again keeps waiting for it).
        """

    @abc.abstractmethod
    async def resize_volume(self, vm_id: str, volume_id: str, size_bytes: int) -> None:
        """Grow an attached volume online; the guest is told the new size."""

    @abc.abstractmethod
    async def snapshot_volume(self, vm_id: str, volume_id: str, target: Path) -> None:
        """Copy an attached volume, as of now (crash-consistent), to a new standalone qcow2.

        `target` must not exist; on failure nothing is left at `target`.
        """

    @abc.abstractmethod
    async def attached_volumes(self, vm_id: str) -> set[str]:
        """The ids of the volumes the running VM holds (empty when it does not run)."""


def check_spec_files(spec: VMSpec) -> None:
    """Every file the VM needs exists (the same check, and message, for every driver)."""
    for label, path in (
        ("boot disk", spec.boot_disk),
        ("kernel", spec.kernel),
        ("initrd", spec.initrd),
        ("seed ISO", spec.seed_iso),
        *((f"volume {v.volume_id}", v.path) for v in spec.volumes),
    ):
        if path is not None and not path.is_file():
            raise DriverError(f"cannot start {spec.vm_id}: {label} {path} does not exist")
