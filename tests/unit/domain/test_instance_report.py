"""apply_report: how an agent's observation moves an instance (pure rules)."""

from __future__ import annotations

from cumulo.domain.instance import InstanceState as S
from cumulo.domain.instance import Recorded, Seen, apply_report


def rec(state: str = "running", desired: str = "running", reboot_seq: int = 0,
        done_seq: int = 0, reason: str = "") -> Recorded:
    return Recorded(state, reason, desired, reboot_seq, done_seq)


def seen(state: S = S.RUNNING, reason: str = "", guest: bool = False,
         done: int | None = None) -> Seen:
    return Seen(state, reason, guest, done)


def test_nothing_new_writes_nothing() -> None:
    out = apply_report(rec(), seen())
    assert (out.changed, out.agent_must_know, out.observed_change) == (False, False, False)
    assert (out.state, out.desired) == ("running", "running")


def test_pending_to_running_is_written_without_waking_the_agent() -> None:
    out = apply_report(rec(state="pending"), seen(S.RUNNING))
    assert (out.state, out.changed, out.observed_change) == ("running", True, True)
    assert out.agent_must_know is False


def test_a_running_vm_with_a_reboot_owed_shows_rebooting() -> None:
    out = apply_report(rec(reboot_seq=2, done_seq=1), seen(S.RUNNING))
    assert out.state == "rebooting"
    assert out.agent_must_know  # rebooting is a state its decisions read


def test_a_done_reboot_is_recorded_and_told_to_the_agent() -> None:
    out = apply_report(rec(state="rebooting", reboot_seq=2, done_seq=1), seen(S.RUNNING, done=2))
    assert (out.state, out.done_seq, out.changed, out.agent_must_know) == (
        "running", 2, True, True)


def test_an_older_reboot_count_never_goes_back() -> None:
    out = apply_report(rec(reboot_seq=3, done_seq=3), seen(S.RUNNING, done=1))
    assert (out.done_seq, out.state, out.changed) == (3, "running", False)


def test_a_guest_that_powers_off_makes_the_wish_stopped() -> None:
    out = apply_report(rec(), seen(S.STOPPED, guest=True))
    assert (out.state, out.desired, out.agent_must_know) == ("stopped", "stopped", True)


def test_a_stop_the_agent_asked_for_keeps_the_users_wish() -> None:
    out = apply_report(rec(state="stopping", desired="running"), seen(S.STOPPED))
    assert (out.state, out.desired) == ("stopped", "running")


def test_a_pending_delete_stays_deleting_whatever_is_seen() -> None:
    out = apply_report(rec(state="deleting", desired="deleted"), seen(S.ERROR, "boom"))
    assert (out.state, out.reason, out.changed) == ("deleting", "", False)


def test_a_new_reason_alone_is_a_change() -> None:
    out = apply_report(rec(state="error", reason="a"), seen(S.ERROR, "b"))
    assert (out.reason, out.changed, out.observed_change, out.agent_must_know) == (
        "b", True, True, True)
