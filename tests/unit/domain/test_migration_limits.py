"""Live migration's time limits as pure rules (cumulo.domain.migration.overdue / expire): the
clock is an argument, so every boundary is exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cumulo.domain.migration import (
    Limits,
    MigrationPhase,
    Record,
    Step,
    destination_step,
    expire,
    overdue,
    source_step,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(max_s=600, prepare_s=120)
INCOMING = {"host": "10.250.0.2", "nbd_port": 20000, "export": "root", "migration_port": 1}
HOT = {"disk_bytes_copied": 1 << 30, "disk_bytes_total": 1 << 30, "ram_bytes_copied": 9 << 30,
       "ram_bytes_total": 1 << 30, "dirty_pages_rate": 90_000, "expected_downtime_ms": 4000,
       "passes": 37}


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def phase(rec: Record) -> MigrationPhase:
    """`rec.state` read afresh: after an assert on it mypy keeps the narrowed type across
    expire(), which changes it."""
    return rec.state


def preparing() -> Record:
    return Record(state=MigrationPhase.PREPARING, started=T0)


def copying() -> Record:
    return Record(state=MigrationPhase.COPYING_MEMORY, incoming=dict(INCOMING),
                  progress=dict(HOT), started=T0)


def test_a_silent_destination_is_overdue_after_prepare_seconds_exactly() -> None:
    assert overdue(preparing(), at(120), LIMITS) is None
    why = overdue(preparing(), at(120.001), LIMITS)
    assert why == ("the destination did not get ready within [migration] prepare_seconds = "
                   "120 s (no answer from its agent)")


def test_a_copy_that_does_not_converge_is_overdue_after_max_seconds_with_its_progress() -> None:
    assert overdue(copying(), at(600), LIMITS) is None  # past prepare_s: it is ready
    why = overdue(copying(), at(601), LIMITS)
    assert why == ("it did not switch over within [migration] max_seconds = 600 s "
                   "(copying-memory; last progress: disk 1024 of 1024 MiB, memory pass 37, "
                   "dirty rate 90000 pages/s, 9216 MiB sent of 1024 MiB RAM, expected "
                   "downtime 4000 ms)")
    disks = Record(state=MigrationPhase.COPYING_DISKS, incoming=dict(INCOMING), started=T0,
                   progress={"disk_bytes_copied": 1 << 29, "disk_bytes_total": 1 << 30})
    assert "(copying-disks; last progress: disk 512 of 1024 MiB, memory copy not started)" in (
        overdue(disks, at(601), LIMITS) or "")


@pytest.mark.parametrize("rec", [
    Record(state=MigrationPhase.QUEUED),  # waits for its turn, no host yet
    Record(state=MigrationPhase.SWITCHING_OVER, incoming=dict(INCOMING), switched=True,
           started=T0),  # it can only go forward now
    Record(state=MigrationPhase.COMPLETED, started=T0),
    Record(state=MigrationPhase.CANCELLED, started=T0),
])
def test_queued_switched_and_ended_ones_are_never_overdue(rec: Record) -> None:
    assert overdue(rec, at(10**6), LIMITS) is None
    assert not expire(rec, at(10**6), LIMITS)


def test_expire_fails_a_copy_and_the_source_rolls_back_first() -> None:
    rec = copying()
    assert not expire(rec, at(599), LIMITS) and rec.state is MigrationPhase.COPYING_MEMORY
    assert expire(rec, at(601), LIMITS)
    assert phase(rec) is MigrationPhase.FAILED and "max_seconds = 600 s" in rec.reason
    assert rec.active  # the destination holds its capacity until it cleaned up
    assert source_step(rec) is Step.ABORT and destination_step(rec) is None


def test_expire_of_a_silent_destination_leaves_the_source_alone_and_cleans_the_destination(
        ) -> None:
    rec = preparing()
    assert expire(rec, at(121), LIMITS)
    assert rec.state is MigrationPhase.FAILED and "prepare_seconds" in rec.reason
    assert source_step(rec) is None and rec.source_done  # it was never told anything
    assert destination_step(rec) is Step.ABORT  # whatever it prepared, when it is heard
