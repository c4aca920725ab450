"""What a source's report does to a live migration's record (cumulo.domain.migration.on_source)."""

from __future__ import annotations

from datetime import UTC, datetime

from cumulo.domain.migration import (
    MigrationPhase,
    Record,
    SideReport,
    Step,
    destination_step,
    on_source,
    source_step,
)

INCOMING = {"host": "10.250.0.2", "nbd_port": 20000, "export": "root", "migration_port": 1}


def copying() -> Record:
    return Record(state=MigrationPhase.COPYING_MEMORY, incoming=dict(INCOMING),
                  started=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_failure_before_the_switch_over_rolls_back_to_the_source() -> None:
    r = copying()
    on_source(r, SideReport(step=Step.MIGRATE, state="failed", reason="qemu said no"))
    assert (r.state, r.reason, r.source_done) == (MigrationPhase.FAILED, "qemu said no", True)


def test_a_failure_said_after_the_switch_over_changes_nothing() -> None:
    """A source agent restarted after the switch-over (its driver lost the paused copy) says
    failed. The guest is the destination's: the record goes on, and the source keeps its step
    (were it done, the instance, still assigned to it and no longer moving, would be started
    there again while it arrives on the destination: the chaos storm's leftover VM)."""
    r = copying()
    on_source(r, SideReport(step=Step.MIGRATE, state="completed", downtime_ms=20, total_s=1.0))
    assert r.switched and r.state is MigrationPhase.SWITCHING_OVER
    on_source(r, SideReport(step=Step.MIGRATE, state="failed",
                            reason="cannot migrate i-1: i-1 is not running"))
    assert (r.state, r.source_done, r.reason) == (MigrationPhase.SWITCHING_OVER, False, "")
    assert source_step(r) is Step.MIGRATE and destination_step(r) is Step.FINISH
