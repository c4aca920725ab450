"""The host's disk space as placement needs it: the filesystem of the state dir (instance
disks, volumes), measured at every pass and reported when it moved enough to matter."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cumulo.protocol import HostDisk

MIB = 1024 * 1024


@dataclass
class DiskGauge:
    path: Path
    _sent: HostDisk | None = None

    def measure(self) -> HostDisk | None:
        """Total and free (for unprivileged writers: root's reserve is not counted) MiB;
        None when the filesystem cannot be read."""
        try:
            usage = shutil.disk_usage(self.path)
        except OSError:
            return None
        return HostDisk(total_mib=usage.total // MIB, free_mib=usage.free // MIB)

    def to_report(self) -> HostDisk | None:
        """The measure when it differs from the last one sent by at least 1 MiB or 0.1 % of
        the total (a host whose VMs write all the time would otherwise report every pass)."""
        now = self.measure()
        sent = self._sent
        if now is None:
            return None
        if (sent is None or sent.total_mib != now.total_mib
                or abs(sent.free_mib - now.free_mib) >= max(1, now.total_mib // 1000)):
            return now
        return None

    def acknowledge(self, disk: HostDisk | None) -> None:
        if disk is not None:
            self._sent = disk

    def forget(self) -> None:
        """Report again at the next pass (resync, or a request that may have been lost)."""
        self._sent = None
