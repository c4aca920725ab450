"""Every branch of the reconciler's decision table."""

from __future__ import annotations

import pytest

from cumulo.agent.decide import DELETED, Step, decide
from cumulo.agent.drivers.base import Observed, PowerState
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


def obs(power: PowerState, reason: str = "") -> Observed:
    return Observed(vm_id="i-0123456789abcdef0", power=power, pid=1, reason=reason)


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


def test_crash_reason_is_passed_on() -> None:
    r = decide(a(), obs(PowerState.CRASHED, "qemu exited (pid 9)"), shutdown_requested=False,
               shutdown_overdue=False, stop_timeout_s=30)
    assert r.reason == "qemu exited (pid 9)"
