"""Every branch of the reconciler's decision table."""

from __future__ import annotations

import pytest

from cumulo.agent.decide import DELETED, Step, decide
from cumulo.agent.drivers.base import Observed, PowerState
from cumulo.domain.disk_errors import DiskIoError
from cumulo.protocol import Assignment, ImageFile, ImageRef


def a(desired: str = "running", state: str = "running", reboot: tuple[int, int] = (0, 0),
      ) -> Assignment:
    return Assignment(
        id="i-0123456789abcdef0", hostname="vm", project="default", arch="x86_64", vcpus=1,
        ram_mib=128, disk_gib=1, state=state, desired_power=desired, generation=3,
        reboot_seq=reboot[0], reboot_done_seq=reboot[1],
        image=ImageRef(id="img-0123456789abcdef0", boot="bios",
                       disk=ImageFile(sha256="0" * 64, size=0)),
    )


def obs(power: PowerState, reason: str = "", errors: tuple[DiskIoError, ...] = ()
        ) -> Observed:
    return Observed(vm_id="i-0123456789abcdef0", power=power, pid=1, reason=reason,
                    io_errors=errors)


def d(assign: Assignment, o: Observed | None, requested: bool = False, overdue: bool = False
      ) -> tuple[Step, str]:
    r = decide(assign, o, shutdown_requested=requested, shutdown_overdue=overdue,
               stop_timeout_s=30)
    return r.step, r.report


@pytest.mark.parametrize(
    ("assign", "o", "kw", "expected"),
    [
        (a(), None, {}, (Step.START, "running")),
        (a(), obs(PowerState.STOPPED), {}, (Step.START, "running")),
        (a(), obs(PowerState.RUNNING), {}, (Step.NONE, "running")),
        (a(reboot=(2, 1)), obs(PowerState.RUNNING), {}, (Step.REBOOT, "running")),
        (a(), obs(PowerState.CRASHED, "died"), {}, (Step.NONE, "error")),
        (a(state="error"), obs(PowerState.CRASHED), {}, (Step.NONE, "error")),
        (a(state="starting"), obs(PowerState.CRASHED), {}, (Step.START, "running")),
        (a(), obs(PowerState.SHUTDOWN), {}, (Step.FORCE_STOP, "stopped")),
        (a("stopped"), obs(PowerState.RUNNING), {}, (Step.REQUEST_SHUTDOWN, "stopping")),
        (a("stopped"), obs(PowerState.RUNNING), {"requested": True}, (Step.NONE, "stopping")),
        (a("stopped"), obs(PowerState.RUNNING), {"requested": True, "overdue": True},
         (Step.FORCE_STOP, "stopped")),
        (a("stopped"), obs(PowerState.SHUTDOWN), {}, (Step.FORCE_STOP, "stopped")),
        (a("stopped"), obs(PowerState.STOPPED), {}, (Step.NONE, "stopped")),
        (a("stopped"), None, {}, (Step.NONE, "stopped")),
        (a("deleted"), obs(PowerState.RUNNING), {}, (Step.DESTROY, DELETED)),
        (a("deleted"), None, {}, (Step.DESTROY, DELETED)),
    ],
)
def test_decision_table(assign: Assignment, o: Observed | None, kw: dict[str, bool],
                        expected: tuple[Step, str]) -> None:
    assert d(assign, o, **kw) == expected


def test_guest_poweroff_is_reported_as_guest_initiated() -> None:
    r = decide(a(), obs(PowerState.SHUTDOWN), shutdown_requested=False, shutdown_overdue=False,
               stop_timeout_s=30)
    assert r.guest_initiated and "powered itself off" in r.reason


def test_a_guest_that_obeyed_a_stop_since_replaced_by_a_start_is_started_again() -> None:
    r = decide(a(), obs(PowerState.SHUTDOWN), shutdown_requested=False, shutdown_overdue=False,
               stop_timeout_s=30, powered_off_on_request=True)
    assert (r.step, r.report, r.guest_initiated) == (Step.FORCE_STOP, "starting", False)


def test_crash_reason_is_passed_on() -> None:
    r = decide(a(), obs(PowerState.CRASHED, "qemu exited (pid 9)"), shutdown_requested=False,
               shutdown_overdue=False, stop_timeout_s=30)
    assert r.reason == "qemu exited (pid 9)"


FULL = (DiskIoError("vol-0123456789abcdef0", nospace=True, path="/v/vol.qcow2"),)


def test_a_paused_vm_is_shown_paused_with_its_cause_and_resumed_once_it_may() -> None:
    paused = obs(PowerState.PAUSED, "qemu status io-error", FULL)
    r = decide(a(), paused, shutdown_requested=False, shutdown_overdue=False, stop_timeout_s=30)
    assert (r.step, r.report) == (Step.NONE, "paused")
    assert r.reason.startswith("host disk full (I/O error on vol-0123456789abcdef0)")
    r = decide(a(), paused, shutdown_requested=False, shutdown_overdue=False, stop_timeout_s=30,
               resumable=True)
    assert (r.step, r.report) == (Step.RESUME, "running")
    # Paused for another cause: shown, with QEMU's status.
    r = decide(a(), obs(PowerState.PAUSED, "qemu status paused"), shutdown_requested=False,
               shutdown_overdue=False, stop_timeout_s=30)
    assert (r.step, r.report, r.reason) == (
        Step.NONE, "paused", "paused by the hypervisor (qemu status paused)")


def test_reboot_and_stop_work_on_a_paused_vm() -> None:
    paused = obs(PowerState.PAUSED, "qemu status io-error", FULL)
    assert d(a(reboot=(1, 0)), paused) == (Step.REBOOT, "running")
    # Stop while its disk is still full: a forced stop at once (it cannot power off cleanly).
    for requested in (False, True):
        r = decide(a("stopped"), paused, shutdown_requested=requested, shutdown_overdue=False,
                   stop_timeout_s=30)
        assert (r.step, r.report) == (Step.FORCE_STOP, "stopped")
        assert r.reason.startswith("it was paused (host disk full (I/O error on vol-")
        assert r.reason.endswith("and could not power off; it was powered off by force")
    # Space is back: the power-off request (which lets the guest run to see it) comes first.
    r = decide(a("stopped"), paused, shutdown_requested=False, shutdown_overdue=False,
               stop_timeout_s=30, resumable=True)
    assert (r.step, r.report) == (Step.REQUEST_SHUTDOWN, "stopping")
    # Paused for no disk error (paused by hand): asked first, forced if still paused.
    manual = obs(PowerState.PAUSED, "qemu status paused")
    assert d(a("stopped"), manual) == (Step.REQUEST_SHUTDOWN, "stopping")
    r = decide(a("stopped"), manual, shutdown_requested=True, shutdown_overdue=False,
               stop_timeout_s=30)
    assert (r.step, r.report) == (Step.FORCE_STOP, "stopped")
