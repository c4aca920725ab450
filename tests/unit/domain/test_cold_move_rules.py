"""A cold move's rules: the copy being over (`switched`) does not bind it as a live
switch-over does; a completed report without a digest is not taken; a destination that
refuses the copy fails it, and the source then the destination are told to undo."""

from __future__ import annotations

from cumulo.domain import migration as rules
from cumulo.domain.migration import MigrationPhase, Record, SideReport, Step

DIGEST = "sha256:" + "ab" * 32


def _copied(cold: bool) -> Record:
    r = Record(state=MigrationPhase.COPYING_DISKS, incoming={"host": "10.0.0.2"}, cold=cold)
    rules.on_source(r, SideReport(Step.MIGRATE, "completed", checksum=DIGEST if cold else ""))
    assert r.switched and r.state is MigrationPhase.SWITCHING_OVER
    return r


def test_a_cold_move_can_still_be_cancelled_or_failed_once_copied_a_live_one_cannot() -> None:
    live, cold = _copied(False), _copied(True)
    assert rules.cancel(live, "x") == "it is switching over: it can only complete now"
    assert rules.cancel(cold, "by an admin") is None and cold.state is MigrationPhase.CANCELLED
    assert rules.source_step(cold) is Step.ABORT and rules.destination_step(cold) is None
    live2 = _copied(False)
    rules.fail(live2, "late")
    assert live2.state is MigrationPhase.SWITCHING_OVER


def test_a_cold_source_that_names_no_digest_is_not_taken_as_completed() -> None:
    r = Record(state=MigrationPhase.COPYING_DISKS, incoming={"host": "10.0.0.2"}, cold=True)
    rules.on_source(r, SideReport(Step.MIGRATE, "completed"))
    assert not r.switched and r.state is MigrationPhase.COPYING_DISKS
    rules.on_source(r, SideReport(Step.MIGRATE, "completed", checksum=DIGEST))
    assert r.switched and r.checksum == DIGEST and rules.destination_step(r) is Step.FINISH


def test_a_destination_that_refuses_the_copy_fails_it_and_the_source_undoes_first() -> None:
    r = _copied(True)
    moved = rules.on_destination(r, SideReport(Step.FINISH, "failed", reason="digests differ"))
    assert not moved and (r.state, r.reason) == (MigrationPhase.FAILED, "digests differ")
    assert rules.source_step(r) is Step.ABORT and rules.destination_step(r) is None
    rules.on_source(r, SideReport(Step.ABORT, rules.DONE))
    assert rules.destination_step(r) is Step.ABORT
    rules.on_destination(r, SideReport(Step.ABORT, rules.DONE))
    assert not r.active and r.destination_done and r.source_done
    live = _copied(False)  # a live switch-over only goes forward: a failed finish retries
    rules.on_destination(live, SideReport(Step.FINISH, "failed", reason="x"))
    assert live.state is MigrationPhase.SWITCHING_OVER


def test_the_last_progress_stays_when_the_source_reports_zeros_at_the_end() -> None:
    r = Record(state=MigrationPhase.COPYING_MEMORY, incoming={"host": "10.0.0.2"})
    rules.on_source(r, SideReport(Step.MIGRATE, "copying-memory",
                                  progress={"passes": 3, "dirty_pages_rate": 900}))
    rules.on_source(r, SideReport(Step.MIGRATE, "completed", downtime_ms=80,
                                  progress={"passes": 0, "dirty_pages_rate": 0}))
    assert r.switched and r.progress == {"passes": 3, "dirty_pages_rate": 900}
