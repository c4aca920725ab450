"""The reconciler's brain: one pure function from (desired, observed) to the next step.

Kept free of I/O so every branch is unit-tested; agent/reconciler.py carries the steps out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cumulo.agent.drivers.base import Observed, PowerState
from cumulo.domain.disk_errors import pause_reason, remote
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.protocol import Assignment

DELETED = "deleted"


class Step(StrEnum):
    NONE = "none"
    START = "start"
    REQUEST_SHUTDOWN = "request_shutdown"
    FORCE_STOP = "force_stop"
    REBOOT = "reboot"
    RESUME = "resume"
    DESTROY = "destroy"


@dataclass(frozen=True)
class Decision:
    step: Step
    report: str  # the state to report once the step is done
    reason: str = ""
    guest_initiated: bool = False


def decide(
    a: Assignment,
    obs: Observed | None,
    *,
    shutdown_requested: bool,
    shutdown_overdue: bool,
    stop_timeout_s: float,
    resumable: bool = False,
    powered_off_on_request: bool = False,
) -> Decision:
    """`resumable`: the VM is paused on full disks that have room again, or on network
    volumes whose export is worth trying again (see cumulo.domain.disk_errors.may_resume).
    `powered_off_on_request`: cumulo asked the guest to power off (for a stop the user may
    since have replaced with a start; this agent, or the driver's record of it from before a
    restart), so a powered-off guest did what it was asked, not what it chose."""
    desired = DesiredPower(a.desired_power)
    power = obs.power if obs is not None else None
    S = InstanceState

    if desired is DesiredPower.DELETED:
        return Decision(Step.DESTROY, DELETED)

    if desired is DesiredPower.STOPPED:
        if power in (PowerState.RUNNING, PowerState.PAUSED):
            # Paused on a disk that still cannot be written: resumed to see a power-off
            # request, its guest would either pause again on the same write or, racing it,
            # power off with that write lost all the same. Forced at once, and said so.
            stuck = power is PowerState.PAUSED and bool(obs and obs.io_errors) and not resumable
            if not shutdown_requested and not stuck:
                return Decision(Step.REQUEST_SHUTDOWN, S.STOPPING)
            if power is PowerState.PAUSED:  # cannot power off (still, or again, paused)
                assert obs is not None
                return Decision(
                    Step.FORCE_STOP,
                    S.STOPPED,
                    f"it was paused ({_paused(obs)}) and could not power off;"
                    " it was powered off by force",
                )
            if shutdown_overdue:
                return Decision(
                    Step.FORCE_STOP,
                    S.STOPPED,
                    f"the guest did not power off within {stop_timeout_s:g} s; "
                    "it was powered off by force",
                )
            return Decision(Step.NONE, S.STOPPING)
        if power is PowerState.SHUTDOWN:
            return Decision(Step.FORCE_STOP, S.STOPPED)
        return Decision(Step.NONE, S.STOPPED)

    # desired running
    if power is None or power is PowerState.STOPPED:
        return Decision(Step.START, S.RUNNING)
    if power is PowerState.CRASHED:
        assert obs is not None
        if a.state == S.STARTING:  # the user asked to start it again after the crash
            return Decision(Step.START, S.RUNNING)
        return Decision(Step.NONE, S.ERROR, obs.reason or "the VM process exited unexpectedly")
    if power is PowerState.SHUTDOWN:
        if powered_off_on_request:  # a stop, then a start before the guest was off: start it
            return Decision(Step.FORCE_STOP, S.STARTING)
        return Decision(
            Step.FORCE_STOP, S.STOPPED, "the guest powered itself off", guest_initiated=True
        )
    if a.reboot_seq > a.reboot_done_seq:
        return Decision(Step.REBOOT, S.RUNNING)
    if power is PowerState.PAUSED:
        assert obs is not None
        if resumable and remote(obs.io_errors):
            # A try: while the storage host is away, QEMU pauses it again on the same write.
            # It shows paused until a pass sees it run.
            return Decision(Step.RESUME, S.PAUSED, _paused(obs))
        if resumable:
            return Decision(Step.RESUME, S.RUNNING)
        return Decision(Step.NONE, S.PAUSED, _paused(obs))
    return Decision(Step.NONE, S.RUNNING)


def _paused(obs: Observed) -> str:
    return pause_reason(obs.io_errors, obs.reason)
