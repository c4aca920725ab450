"""Live migration between fake hosts: the QEMU driver's state machine, one step per look.

A `FakeFabric` stands in for the underlay: a destination listens on (address, port), and the
source reaches it there. A migration advances one step each time the source is asked for its
status (disk chunks, memory passes, switch-over, completed), so a test can act at any stage;
a destination VM that dies (simulate_crash) makes the source fail with a reason and run on.
At completion the boot disk's bytes really move (the destination file gets the source's).
"""

from __future__ import annotations

import itertools
import json
import os
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
    """The network between fake hosts: (address, port) -> the host listening there.

    Fake hosts in one process (tests) find each other in `listeners`. Fake hosts in separate
    processes (the agents of a `cumulo up --hosts N` fake cloud) share a directory, `shared`:
    a destination listening is a file `<address>_<port>.json` naming its process and its
    boot disk; the source's switch-over copies the disk there and writes `<address>_<port>
    .done` with the console history, which the destination reads at its next status. (This
    machine's files stand in for the underlay: a fake cloud's hosts are all on one machine.)
    """

    listeners: dict[tuple[str, int], object] = field(default_factory=dict)
    ports: itertools.count[int] = field(default_factory=lambda: itertools.count(49152))
    shared: Path | None = None

    def _file(self, incoming: IncomingMigration, suffix: str) -> Path | None:
        if self.shared is None:
            return None
        return self.shared / f"{incoming.host}_{incoming.migration_port}.{suffix}"

    def listen(self, incoming: IncomingMigration, boot_disk: Path, disk_bytes: int) -> None:
        """Tell sources in other processes where this host listens."""
        path = self._file(incoming, "json")
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.close(incoming)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "vm": incoming.vm_id,
                                   "disk": str(boot_disk), "disk_bytes": disk_bytes}))
        tmp.replace(path)

    def close(self, incoming: IncomingMigration) -> None:
        for suffix in ("json", "done"):
            if (path := self._file(incoming, suffix)) is not None:
                path.unlink(missing_ok=True)

    def remote(self, incoming: IncomingMigration) -> RemoteListener | None:
        """The destination listening in another process for this VM, if it still runs."""
        path = self._file(incoming, "json")
        try:
            facts = json.loads(path.read_text()) if path is not None else None
        except (OSError, ValueError):
            return None
        if not isinstance(facts, dict) or facts.get("vm") != incoming.vm_id:
            return None
        try:
            os.kill(int(facts["pid"]), 0)  # a killed agent took its fake VMs with it
        except (OSError, ValueError):
            return None
        return RemoteListener(Path(facts["disk"]), int(facts["disk_bytes"]))

    def hand_over(self, incoming: IncomingMigration, events: list[str]) -> None:
        """The source's switch-over, for a destination in another process."""
        if (path := self._file(incoming, "done")) is not None:
            path.write_text(json.dumps(events))

    def arrived(self, incoming: IncomingMigration) -> list[str] | None:
        """The console history a source handed over to this destination, once it has."""
        path = self._file(incoming, "done")
        try:
            events = json.loads(path.read_text()) if path is not None else None
        except (OSError, ValueError):
            return None
        return [str(e) for e in events] if isinstance(events, list) else None


@dataclass(frozen=True)
class RemoteListener:
    boot_disk: Path
    disk_bytes: int


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
    finish_failing_since: float | None = None  # destination: its first failed resume (time)

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
