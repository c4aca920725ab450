"""Live migration between fake hosts: the QEMU driver's state machine, one step per look.

A `FakeFabric` stands in for the underlay: a destination listens on (address, port), and the
source reaches it there. A migration advances one step each time the source is asked for its
status (disk chunks, memory passes, switch-over, completed), so a test can act at any stage;
a destination VM that dies (simulate_crash) makes the source fail with a reason and run on.
At completion the boot disk's bytes really move (the destination file gets the source's).
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cumulo.agent.drivers.base import (
    DriverError,
    IncomingMigration,
    MigrationProgress,
    MigrationState,
    MigrationStatus,
)

DISK_STEPS = 4  # status calls the disk copy takes
MEMORY_PASSES = 2
FAKE_DISK_BYTES = 1 << 30
FAKE_RAM_BYTES = 128 << 20


@dataclass
class FakeFabric:
    """The network between fake hosts: (address, port) -> the host listening there."""

    listeners: dict[tuple[str, int], object] = field(default_factory=dict)
    ports: itertools.count[int] = field(default_factory=lambda: itertools.count(49152))


@dataclass
class FakeMigration:
    role: str  # "source" | "destination"
    incoming: IncomingMigration
    state: MigrationState
    disk_bytes: int = FAKE_DISK_BYTES
    step: int = 0
    passes: int = 0
    reason: str = ""
    downtime_ms: int | None = None
    total_s: float | None = None
    disk_created: Path | None = None  # destination: the boot disk prepare_incoming made
    converges: bool = True  # False: a guest dirtying memory faster than the link (hot_memory)
    # A cold move (fake_cold_move): the disk only, no VM running on either side.
    cold: bool = False
    disk: Path | None = None  # the source's boot disk
    checksum: str = ""  # the source's digest once completed; the destination's once checked

    def status(self, vm_id: str) -> MigrationStatus:
        copied = min(self.step, DISK_STEPS) * self.disk_bytes // DISK_STEPS
        progress = MigrationProgress()
        if self.role == "source":
            ram = FAKE_RAM_BYTES if self.passes else 0
            progress = MigrationProgress(
                disk_bytes_copied=copied,
                disk_bytes_total=self.disk_bytes,
                ram_bytes_copied=ram * self.passes,
                ram_bytes_total=FAKE_RAM_BYTES,
                dirty_pages_rate=(100 if self.converges else 90_000) if self.passes else 0,
                expected_downtime_ms=20 if self.passes else 0,
                passes=self.passes,
            )
        return MigrationStatus(vm_id, self.role, self.state, progress, self.downtime_ms,
                               self.total_s, self.reason, self.checksum)

    def advance(self) -> None:
        """One step of the source's copy (the caller has checked the destination is there)."""
        if self.state is MigrationState.COPYING_DISKS:
            self.step += 1
            if self.step >= DISK_STEPS:
                self.state = MigrationState.COPYING_MEMORY
        elif self.state is MigrationState.COPYING_MEMORY:
            self.passes += 1
            if self.passes >= MEMORY_PASSES and self.converges:
                self.state = MigrationState.SWITCHING_OVER
        elif self.state is MigrationState.SWITCHING_OVER:
            self.state = MigrationState.COMPLETED
            self.downtime_ms, self.total_s = 20, 0.5


def copy_disk(source: Path, target: Path, check_paths: bool) -> None:
    """The mirror's effect: the destination's boot disk holds the source's bytes."""
    if source.is_file():
        shutil.copyfile(source, target)
    elif check_paths:
        raise DriverError(f"the disk copy failed: {source} does not exist")
