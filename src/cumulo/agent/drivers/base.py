"""The hypervisor driver contract.

A driver runs virtual machines on one host. The agent's reconciler calls it; the driver never
talks to the API or the database. Every call is idempotent (calling it twice has the effect of
calling it once) so a reconciler that crashed half-way can simply call again.

The same contract suite (tests/contract) runs against every driver: the QEMU driver (real VMs)
and the fake driver (control-plane scale tests).
"""

from __future__ import annotations

import abc
import ipaddress
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
class LocalFile:
    """A volume stored on this host: a standalone qcow2 file the VM opens itself."""

    path: Path


@dataclass(frozen=True)
class NbdExport:
    """A volume stored on another host, exported over NBD (qemu-storage-daemon there).

    Only an address, a port and two secrets cross hosts, never a path: `name` is the export
    name (unguessable) and `key` the TLS-PSK key (hex) whose identity is the volume id. The
    key stays on the hosts: it is never handed to the guest.
    """

    host: str  # the storage host's underlay address (an IP literal)
    port: int
    name: str
    key: str


VolumeSource = LocalFile | NbdExport


@dataclass(frozen=True)
class VolumeAttachment:
    """A block volume given to a VM as a virtio disk, described by how to reach it (`source`:
    a local qcow2 file or an NBD export of another host), not by a path.

    The guest sees it as /dev/vdX with the disk serial `serial` (the volume id without its
    dash: "vol0123456789abcdef0", the 20 bytes virtio-blk carries; EBS on NVMe does the same).
    `iops` and `mbps` (MiB/s) cap its I/O through QEMU throttling (on the client side for an
    NBD export); 0 means no cap.
    `write_error`: a write the host cannot do pauses the VM ("stop") or fails in the guest.
    """

    volume_id: str  # "vol-<17 hex>" (validated by the caller)
    source: VolumeSource
    iops: int = 0
    mbps: int = 0
    write_error: WriteErrorPolicy = "stop"

    @property
    def serial(self) -> str:
        return self.volume_id.replace("-", "")

    @property
    def path(self) -> Path | None:
        """The local file, or None for a volume of another host."""
        return self.source.path if isinstance(self.source, LocalFile) else None


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
    # Host CPUs of this VM alone, vCPU i pinned to cpu_set[i] (a dedicated host); (): none.
    cpu_set: tuple[int, ...] = ()


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
    # SHUTDOWN only: cumulo asked this guest to power off (request_shutdown) since its
    # process started. Kept by the driver, so that an agent restarted between a stop and a
    # start that came before the guest was off still tells the guest obeying the old stop
    # from a guest that chose to power off (agent.decide: powered_off_on_request).
    power_off_requested: bool = False


@dataclass(frozen=True)
class VMStats:
    """Resource use of one running VM, as the host sees it (for the agent's /metrics)."""

    vm_id: str
    cpu_seconds: float  # user + system time of its hypervisor process
    rss_bytes: int
    disks: dict[str, tuple[int, int]] = field(default_factory=dict)  # device -> (read, written)
    nics: dict[str, tuple[int, int]] = field(default_factory=dict)  # tap -> (from guest, to guest)


class DriverError(Exception):
    """The hypervisor refused or failed an operation; the message is shown to the operator."""


class DetachTimeout(DriverError):
    """The guest did not release a hot-unplugged disk in time; the volume is still attached."""


class Capability(StrEnum):
    """What a driver can do beyond the base contract (the control plane asks before using it)."""

    LIVE_MIGRATION = "live-migration"  # prepare_incoming / migrate_out / ... below


class MigrationState(StrEnum):
    """Where a migration stands, as one side sees it."""

    INCOMING = "incoming"  # destination: waiting for (or receiving) the VM
    COPYING_DISKS = "copying-disks"  # source: the boot disk mirrors into the destination
    COPYING_MEMORY = "copying-memory"  # source: RAM pre-copy passes
    SWITCHING_OVER = "switching-over"  # source paused: last dirty pages, mirror completed
    COMPLETED = "completed"  # the destination holds the whole VM (finish both sides next)
    FAILED = "failed"  # the source runs on (reason says why)
    CANCELLED = "cancelled"  # the source runs on


@dataclass(frozen=True)
class IncomingMigration:
    """What the destination tells the source: where to send the disk and the memory.

    Only addresses and export names: no path of one host is ever given to another.
    """

    vm_id: str
    host: str  # the destination's underlay address (an IP literal)
    nbd_port: int
    export: str  # NBD export name of the boot disk
    migration_port: int


@dataclass(frozen=True)
class MigrationProgress:
    disk_bytes_copied: int = 0
    disk_bytes_total: int = 0
    ram_bytes_copied: int = 0
    ram_bytes_total: int = 0
    dirty_pages_rate: int = 0  # pages per second
    expected_downtime_ms: int = 0
    passes: int = 0  # RAM pre-copy passes (QEMU's dirty-sync-count)


@dataclass(frozen=True)
class MigrationStatus:
    """One side's view of a migration. `downtime_ms`/`total_s` once COMPLETED (source)."""

    vm_id: str
    role: str  # "source" or "destination"
    state: MigrationState
    progress: MigrationProgress = MigrationProgress()
    downtime_ms: int | None = None
    total_s: float | None = None
    reason: str = ""
    # A cold move's source, once COMPLETED: the digest of the disk it sent (content_digest)
    checksum: str = ""


# Hot-plug slots per VM (PCIe root ports): at most this many volumes are attached at once.
MAX_VOLUMES = 8


class Driver(abc.ABC):
    """One hypervisor host's VMs. Implementations keep per-VM runtime files under their own dir."""

    name: str
    capabilities: frozenset[Capability] = frozenset()

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
    async def resize_volume(self, vm_id: str, att: VolumeAttachment, size_bytes: int) -> None:
        """Grow an attached volume online; the guest is told the new size (a no-op when the
        guest's disk is that large already).

        A local file is grown here; a volume over NBD is grown by its storage host first
        (its export's new size): until then this raises DriverError and changes nothing."""

    @abc.abstractmethod
    async def snapshot_volume(self, vm_id: str, volume_id: str, target: Path) -> None:
        """Copy an attached volume, as of now (crash-consistent), to a new standalone qcow2.

        `target` must not exist; on failure nothing is left at `target`.
        """

    async def vm_stats(self) -> list[VMStats]:
        """Resource use of the running VMs (a driver without processes has none)."""
        return []

    @abc.abstractmethod
    async def attached_volumes(self, vm_id: str) -> set[str]:
        """The ids of the volumes the running VM holds (empty when it does not run)."""


# migrate_out's refusal of a VM whose guest was asked to power off since its process started
# (Observed.power_off_requested): it may still obey during the copy, and arrive powered off
# where nobody knows it was asked (a stop, then a start before it was off: it must run). It
# stays where that is known.
POWER_OFF_PENDING = ("cannot migrate {vm_id}: its guest was asked to power off (a stop, then a "
                     "start before it was off) and may still do so; reboot it, or wait until "
                     "it has powered off and started again")


# How long a destination's finish may fail to resume an arrived guest (QEMU refusing `cont`,
# its monitor not answering) before the arrival ends as a crash there, with this reason: the
# guest waits paused on both hosts meanwhile, and a migration past its switch-over can only
# go forward, so it must end some time (its disk has all arrived; a start boots it there).
FINISH_GIVE_UP_S = 120.0
NOT_RESUMED = ("it arrived by live migration but could not be resumed for {seconds:g} s "
               "({error}); its QEMU was stopped, its disk is here: start it again")


class MigratingDriver(Driver):
    """A driver with Capability.LIVE_MIGRATION: it moves a running VM to another host of the
    same driver while the guest runs (pre-copy; the boot disk is mirrored, never shared).

    The flow (each call idempotent, each side asked about its own part only):
    1. destination `prepare_incoming(spec, address, disk_bytes)`: an empty boot disk of the
       same size, a paused QEMU waiting for the memory, the disk exported to the source.
    2. source `migrate_out(vm_id, incoming)`: starts the copy and returns; the copy goes on
       by itself: disk first, then memory, then the switch-over.
    3. `migration_status(vm_id)` on either side, any time; `cancel_migration(vm_id)` on either
       side before the switch-over: the source runs on intact, the destination is removed
       (no process, no disk, no export).
    4. once the source says COMPLETED: `finish_migration` on the destination (the guest runs
       there), then on the source (its process and boot disk are removed).
    A VM whose migration failed runs on at the source; the destination is cleaned by cancel.

    A cold move (a stopped VM: nothing runs on either side) uses the same calls for status,
    cancel and finish, with its own two to start: the destination's
    `prepare_cold_incoming` (an empty disk exported to the source, no process of the VM),
    the source's `copy_cold_out` (the disk written into that export). The source says
    COMPLETED with the digest of what it sent; the destination's `cold_copy_checksum` stops
    serving and gives the digest of what arrived: the caller compares them before the
    instance changes host (then `finish_migration` on both sides: nothing to resume).
    """

    capabilities = frozenset({Capability.LIVE_MIGRATION})

    @abc.abstractmethod
    async def prepare_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        """Make this host ready to receive `spec`: its boot disk path is this host's and must
        not exist yet (the driver creates it, empty, `disk_bytes` long: the source disk's
        virtual size); it listens on `address` (an IP of this host) only."""

    @abc.abstractmethod
    async def migrate_out(self, vm_id: str, incoming: IncomingMigration) -> None:
        """Start moving the running VM to the destination described by `incoming`."""

    @abc.abstractmethod
    async def migration_status(self, vm_id: str) -> MigrationStatus | None:
        """This side's view of the VM's migration; None when it has none."""

    @abc.abstractmethod
    async def cancel_migration(self, vm_id: str) -> None:
        """Abort before the switch-over: on the source the VM runs on (a no-op once the
        migration has failed or been cancelled; DriverError once it has COMPLETED); on the
        destination everything prepare_incoming made is removed."""

    @abc.abstractmethod
    async def finish_migration(self, vm_id: str) -> None:
        """After COMPLETED: the destination lets the guest run; the source removes its stopped
        copy (process and boot disk). DriverError before the source has completed. A guest
        that arrived powered off (or panicked) is left as it arrived, and a destination
        process that died since the switch-over is left dead, its disk kept: either way the
        arrival ends, and the VM is observed as it is (SHUTDOWN, CRASHED)."""

    @abc.abstractmethod
    async def prepare_cold_incoming(
        self, spec: VMSpec, address: str, disk_bytes: int
    ) -> IncomingMigration:
        """Receive a stopped VM's boot disk: `spec.boot_disk` (must not exist) is made empty,
        `disk_bytes` long, and exported writable on `address` (an IP of this host) only;
        `migration_port` is 0 (no memory to receive)."""

    @abc.abstractmethod
    async def copy_cold_out(self, spec: VMSpec, incoming: IncomingMigration) -> None:
        """Start writing the stopped VM's boot disk (`spec.boot_disk`) into the destination's
        export; it goes on by itself (migration_status says COPYING_DISKS, then COMPLETED
        with the digest, or FAILED). The source disk is only read."""

    @abc.abstractmethod
    async def cold_copy_checksum(self, vm_id: str) -> str:
        """Destination of a cold move: stop serving the disk, and the digest of what arrived
        (the same function as the source's). DriverError when this host receives none."""

    async def announce_self(self, vm_id: str) -> None:
        """Have the VM's NICs announce themselves (gratuitous RARP), once it runs on this
        host's network after an arrival: switches and bridges learn where it is now. A no-op
        for a driver without a network."""


def check_migration_address(address: str) -> None:
    """A migration listens on an IP literal of its host only (never a name to resolve)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise DriverError(f"invalid migration address {address!r}: not an IP address") from None


def check_incoming_volumes(spec: VMSpec) -> None:
    """A VM arriving live may hold volumes over NBD only: the incoming QEMU opens the same
    export as the source's (the storage host serves both until the source stops), while a
    local file would need copying, which is not built (the same check for every driver)."""
    for v in spec.volumes:
        if not isinstance(v.source, NbdExport):
            raise DriverError(f"cannot receive {spec.vm_id}: volume {v.volume_id} is a local "
                              "file (only volumes over NBD follow a live migration)")


def check_spec_files(spec: VMSpec) -> None:
    """Every file the VM needs exists (the same check, and message, for every driver)."""
    for label, path in (
        ("boot disk", spec.boot_disk),
        ("kernel", spec.kernel),
        ("initrd", spec.initrd),
        ("seed ISO", spec.seed_iso),
        *((f"volume {v.volume_id}", v.path) for v in spec.volumes),  # None: over NBD
    ):
        if path is not None and not path.is_file():
            raise DriverError(f"cannot start {spec.vm_id}: {label} {path} does not exist")
