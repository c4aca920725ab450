"""A live migration's states, each host's part in it, and the pure rules that turn the two
hosts' reports into the record's next state (no I/O: unit-tested like agent.decide).

The order of things, and why:
- the destination prepares first (an empty disk, a paused QEMU, an NBD export) and says
  where to send the VM (`incoming`); only then is the source told to send it;
- the source reports the copy (disks, memory, switch-over) until QEMU says completed
  (`switched`): from then on the migration can only go forward;
- the destination lets the guest run (finish), and only once it said so does the instance's
  host change (never two hosts running the guest: no split brain); the source then removes
  its stopped copy;
- a failure or a cancel before the switch-over rolls the SOURCE back first (the guest runs
  on there), and only once the source confirmed it is the destination removed: removing the
  destination while the source might still be completing would lose the guest;
- time limits (`overdue`, the API's sweep applies them): a destination that does not get ready
  within `prepare_s`, or a copy that has not switched over within `max_s` of the start (a
  guest dirtying memory faster than the link carries it, even throttled by auto-converge),
  fail it the same way, with the limit and the last progress in the reason.

A cold move (a stopped instance) follows the same steps with nothing running: the destination
exports an empty disk, the source copies its disk into it and says `completed` with the
digest of what it sent (`switched`: the copy is over); the destination's finish digests what
arrived and only when both match does the instance change host. Until then it can still fail
or be cancelled (a digest that differs, a cancel while checking): nothing runs anywhere and
the source's disk was only read, so going back loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class MigrationPhase(StrEnum):
    """What `cumulo migration show` says (public: never rename one)."""

    QUEUED = "queued"  # waiting for its turn (a drain moves a few at a time)
    PREPARING = "preparing"  # the destination makes room and listens
    COPYING_DISKS = "copying-disks"
    COPYING_MEMORY = "copying-memory"
    SWITCHING_OVER = "switching-over"  # also: switched, the destination takes over
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # `host evacuate`: restarted on the destination while the source was down (nothing
    # copied: its boot disk is made again from its image). Ended as it is recorded; the source
    # is told to discard its copy whenever its agent is heard from again.
    EVACUATED = "evacuated"


ENDED = frozenset({MigrationPhase.COMPLETED, MigrationPhase.FAILED, MigrationPhase.CANCELLED,
                   MigrationPhase.EVACUATED})
# What a side reports of its driver (cumulo.agent.drivers.base.MigrationState), and DONE: the
# step it was given (finish or abort) is carried out.
DONE = "done"
SIDE_STATES = frozenset({"incoming", "copying-disks", "copying-memory", "switching-over",
                         "completed", "failed", "cancelled", DONE})


class Step(StrEnum):
    """What a host must do for a migration (its assignment)."""

    PREPARE = "prepare"  # destination: prepare_incoming, then report its status
    MIGRATE = "migrate"  # source: migrate_out, then report the copy's status
    FINISH = "finish"  # either side: finish_migration
    ABORT = "abort"  # either side: cancel_migration (the source first)
    # The source of an evacuation: destroy its VM (running or not) and its files; the
    # instance runs elsewhere since its host was down (never two copies running).
    DISCARD = "discard"


@dataclass
class Record:
    """What the rules read and write of a migration record."""

    state: MigrationPhase
    incoming: dict[str, Any] | None = None
    switched: bool = False
    source_done: bool = False
    destination_done: bool = False
    active: bool = True
    reason: str = ""
    progress: dict[str, int] = field(default_factory=dict)
    downtime_ms: int | None = None
    total_s: float | None = None
    started: datetime | None = None  # when it left the queue (its time limits count from it)
    cold: bool = False  # a stopped instance's disk, moved (see the module's doc)
    checksum: str = ""  # a cold move: the digest of the disk the source sent

    @property
    def ended(self) -> bool:
        return self.state in ENDED


@dataclass(frozen=True)
class SideReport:
    """One side's observation of the migration (cumulo.protocol.MigrationObservation)."""

    step: Step  # the step it answers
    state: str  # one of SIDE_STATES
    reason: str = ""
    incoming: dict[str, Any] | None = None
    progress: dict[str, int] = field(default_factory=dict)
    downtime_ms: int | None = None
    total_s: float | None = None
    checksum: str = ""  # a cold move's source, completed: the digest of what it sent


def source_step(r: Record) -> Step | None:
    """The source's part now (None: nothing, or done)."""
    if r.source_done:
        return None
    if r.state is MigrationPhase.EVACUATED:
        return Step.DISCARD
    if r.state is MigrationPhase.COMPLETED:
        return Step.FINISH
    if r.state in (MigrationPhase.FAILED, MigrationPhase.CANCELLED):
        return Step.ABORT
    if r.incoming is not None and r.state in (MigrationPhase.COPYING_DISKS,
                                              MigrationPhase.COPYING_MEMORY,
                                              MigrationPhase.SWITCHING_OVER):
        return Step.MIGRATE
    return None


def destination_step(r: Record) -> Step | None:
    """The destination's part now (None: nothing, or done)."""
    if r.destination_done or r.state is MigrationPhase.QUEUED:
        return None
    if r.state in (MigrationPhase.FAILED, MigrationPhase.CANCELLED):
        return Step.ABORT if r.source_done else None  # the source rolls back first
    if r.switched:
        return Step.FINISH
    return Step.PREPARE


def evacuated(reason: str) -> Record:
    """An evacuation's record: ended as it starts (the destination starts the instance as a
    new one of its own), the source still to discard its copy."""
    return Record(state=MigrationPhase.EVACUATED, switched=True, destination_done=True,
                  active=False, reason=reason)


def cancel(r: Record, reason: str) -> str | None:
    """Cancel on request: None when done, else why it cannot be."""
    if r.ended:
        return f"it has already {r.state.value}" if r.state is not MigrationPhase.CANCELLED \
            else None
    if r.switched and not r.cold:
        return "it is switching over: it can only complete now"
    _end(r, MigrationPhase.CANCELLED, reason)
    return None


def fail(r: Record, reason: str) -> None:
    """End it as failed (before the switch-over only: after it, it can only complete; a cold
    move until the destination took it: nothing runs, the source's disk is intact)."""
    if not r.ended and (not r.switched or r.cold):
        _end(r, MigrationPhase.FAILED, reason)


@dataclass(frozen=True)
class Limits:
    """How long a migration may take (config: [migration] max_seconds, prepare_seconds)."""

    max_s: float  # from its start to the switch-over
    prepare_s: float  # from its start to the destination's answer (`incoming`)


def overdue(r: Record, now: datetime, limits: Limits) -> str | None:
    """Why `r` is past its time limit at `now` (None: it is not). A queued one waits for its
    turn (not for a host), a switched one can only go forward: neither is ever overdue."""
    if r.ended or r.switched or r.state is MigrationPhase.QUEUED or r.started is None:
        return None
    age = (now - r.started).total_seconds()
    if r.state is MigrationPhase.PREPARING and age > limits.prepare_s:
        return (f"the destination did not get ready within [migration] prepare_seconds = "
                f"{limits.prepare_s:g} s (no answer from its agent)")
    if age > limits.max_s:
        return (f"it did not switch over within [migration] max_seconds = {limits.max_s:g} s "
                f"({r.state.value}; last progress: {_progress_said(r.progress)})")
    return None


def destination_lost(r: Record, reason: str) -> bool:
    """Its destination host is down (its agent silent): fail it while it can still go back,
    and release what it holds there (`active`); that host is told to clean up (abort) when it
    is heard from again (`destination_done` stays false). A live migration that switched over
    can only go forward: it waits for that host. True when `r` changed."""
    if r.destination_done or not r.active or (r.switched and not r.cold and not r.ended):
        return False
    fail(r, reason)
    r.active = False
    return True


def expire(r: Record, now: datetime, limits: Limits) -> bool:
    """Fail `r` if it is overdue at `now`; True when it did."""
    why = overdue(r, now, limits)
    if why is not None:
        fail(r, why)
    return why is not None


def _progress_said(p: dict[str, int]) -> str:
    mib = 1 << 20
    disk = (f"disk {p.get('disk_bytes_copied', 0) // mib} of "
            f"{p.get('disk_bytes_total', 0) // mib} MiB")
    if not p.get("passes"):
        return f"{disk}, memory copy not started"
    return (f"{disk}, memory pass {p['passes']}, dirty rate {p.get('dirty_pages_rate', 0)} "
            f"pages/s, {p.get('ram_bytes_copied', 0) // mib} MiB sent of "
            f"{p.get('ram_bytes_total', 0) // mib} MiB RAM, expected downtime "
            f"{p.get('expected_downtime_ms', 0)} ms")


def _end(r: Record, state: MigrationPhase, reason: str) -> None:
    if r.state is MigrationPhase.QUEUED:  # no destination was told anything yet
        r.destination_done, r.active = True, False
    r.state, r.reason = state, reason
    if r.incoming is None:  # the source never started: nothing to roll back there
        r.source_done = True


_COPYING = {"copying-disks": MigrationPhase.COPYING_DISKS,
            "copying-memory": MigrationPhase.COPYING_MEMORY,
            "switching-over": MigrationPhase.SWITCHING_OVER}


def on_source(r: Record, rep: SideReport) -> None:
    """Apply the source's report."""
    if rep.step is not source_step(r):
        return  # an answer to a step it no longer has (late, or from before a restart)
    if rep.step is Step.MIGRATE:
        if any(rep.progress.values()):  # an ended QEMU says zeros: the last numbers stay
            r.progress = dict(rep.progress)
        if rep.state in _COPYING and not r.switched:
            r.state = _COPYING[rep.state]
        elif rep.state == "completed":
            if r.cold and not rep.checksum:
                return  # said by a source that cannot tell what it sent: not checkable
            r.switched, r.state = True, MigrationPhase.SWITCHING_OVER
            r.downtime_ms, r.total_s = rep.downtime_ms, rep.total_s
            r.checksum = rep.checksum
        elif rep.state in ("failed", "cancelled"):
            if r.switched and not r.cold:
                # Past the switch-over the guest is the destination's: a source that says
                # failed now (an agent restarted since, whose driver lost the paused copy)
                # changes nothing. Marking it done would drop the migration from its answers
                # while the instance is still assigned to it, not `moving`: it would start
                # the guest again there. Its FINISH comes once the destination has it.
                return
            fail(r, rep.reason or f"the source reported the migration {rep.state}")
            r.source_done = True  # its driver rolled back: the guest runs on there
    elif rep.step is Step.ABORT:
        if rep.state == "completed":
            # The cancel came too late: QEMU had switched over. Go forward, never back.
            r.state, r.switched = MigrationPhase.SWITCHING_OVER, True
            r.downtime_ms, r.total_s = rep.downtime_ms, rep.total_s
            r.active = not r.destination_done  # held there again: it arrives there
            r.reason = f"{r.reason}; too late: the switch-over had completed" if r.reason \
                else "the switch-over had completed"
        elif rep.state == DONE:
            r.source_done = True
    elif rep.step in (Step.FINISH, Step.DISCARD) and rep.state == DONE:
        r.source_done = True


def on_destination(r: Record, rep: SideReport) -> bool:
    """Apply the destination's report. True when the guest now runs there (the caller moves
    the instance to the destination host)."""
    if rep.step is not destination_step(r):
        return False
    if rep.step is Step.PREPARE:
        if rep.state == "failed":
            fail(r, rep.reason or "the destination failed")
        elif rep.state in ("incoming", "completed") and r.incoming is None and rep.incoming:
            r.incoming = dict(rep.incoming)
            if r.state is MigrationPhase.PREPARING:
                r.state = MigrationPhase.COPYING_DISKS
        return False
    if rep.state == "failed" and rep.step is Step.FINISH and r.cold:
        fail(r, rep.reason or "the destination refused the copy")  # e.g. digests differ
        return False
    if rep.state != DONE:
        if rep.step is Step.FINISH and rep.reason:
            r.reason = rep.reason  # shown while it retries
        return False
    r.destination_done, r.active = True, False
    if rep.step is Step.FINISH:
        r.state, r.reason = MigrationPhase.COMPLETED, ""
        return True
    return False
