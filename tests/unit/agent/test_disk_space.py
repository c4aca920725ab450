"""The agent's disk gauge: reported at first, then only when the free space moved enough."""

from __future__ import annotations

from pathlib import Path

from cumulo.agent.disk_space import DiskGauge
from cumulo.protocol import HostDisk


class Scripted(DiskGauge):
    def __init__(self, total: int) -> None:
        super().__init__(Path("/nonexistent"))
        self.now: HostDisk | None = HostDisk(total_mib=total, free_mib=total)

    def measure(self) -> HostDisk | None:
        return self.now


def test_reports_first_then_moves_of_a_mib_or_a_thousandth() -> None:
    g = Scripted(total=100_000)
    first = g.to_report()
    assert first == HostDisk(total_mib=100_000, free_mib=100_000)
    g.acknowledge(first)
    g.now = HostDisk(total_mib=100_000, free_mib=99_901)
    assert g.to_report() is None  # 99 MiB of 100 GB: not worth a report
    g.now = HostDisk(total_mib=100_000, free_mib=99_900)
    assert g.to_report() == g.now
    g.forget()  # a resync: everything is reported again
    g.now = HostDisk(total_mib=100_000, free_mib=100_000)
    assert g.to_report() == g.now
    small = Scripted(total=16)
    small.acknowledge(small.to_report())
    small.now = HostDisk(total_mib=16, free_mib=15)
    assert small.to_report() == small.now  # at least 1 MiB, however small the disk
    small.now = None  # the filesystem cannot be read: nothing to say
    assert small.to_report() is None


def test_measures_a_real_filesystem(tmp_path: Path) -> None:
    disk = DiskGauge(tmp_path).measure()
    assert disk is not None and 0 <= disk.free_mib <= disk.total_mib
    assert DiskGauge(tmp_path / "gone").measure() is None
