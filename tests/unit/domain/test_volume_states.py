"""The volume and snapshot rules (cumulo.domain.volume): which request each state accepts,
and what a host's report makes of a volume or a snapshot."""

from __future__ import annotations

import pytest

from cumulo.domain.errors import Conflict
from cumulo.domain.volume import (
    SnapshotState,
    VolumeAction,
    VolumeState,
    check_snapshot_delete,
    check_snapshot_source,
    check_volume,
    snapshot_after_report,
    volume_after_report,
)

V = VolumeState
ACCEPTED = {
    VolumeAction.ATTACH: {V.AVAILABLE, V.ERROR},
    VolumeAction.RESIZE: {V.AVAILABLE, V.IN_USE},
    VolumeAction.SNAPSHOT: {V.AVAILABLE, V.IN_USE},
}


@pytest.mark.parametrize("action", list(VolumeAction))
@pytest.mark.parametrize("state", list(VolumeState))
def test_each_request_is_accepted_in_its_states_only(action: VolumeAction,
                                                     state: VolumeState) -> None:
    if state in ACCEPTED[action]:
        check_volume("v", state, action, being_deleted=False)
        with pytest.raises(Conflict, match="is being deleted"):
            check_volume("v", state, action, being_deleted=True)
    else:
        with pytest.raises(Conflict) as e:
            check_volume("v", state, action, being_deleted=False)
        assert e.value.code == "invalid_state"
        assert str(e.value) == f"cannot {action.value} volume 'v' while it is {state.value}"


def test_snapshots_are_used_once_taken_and_deleted_once_taken() -> None:
    check_snapshot_source("s", SnapshotState.AVAILABLE)
    for state in (SnapshotState.CREATING, SnapshotState.ERROR, SnapshotState.DELETING):
        with pytest.raises(Conflict, match=f"snapshot 's' is {state.value}"):
            check_snapshot_source("s", state)
    with pytest.raises(Conflict, match="still being taken"):
        check_snapshot_delete("s", SnapshotState.CREATING)
    check_snapshot_delete("s", SnapshotState.ERROR)


def _report(reported: VolumeState, **kw: object) -> tuple[VolumeState, list[tuple[str, str]]]:
    args: dict[str, object] = dict(reason="", being_deleted=False, stored="available",
                                   stored_reason="", attached_before=None, attached_now=None,
                                   device="vdb")
    args.update(kw)
    r = volume_after_report(reported=reported, **args)  # type: ignore[arg-type]
    return r.state, list(r.events)


def test_a_report_moves_a_volume_and_tells_of_attachments_and_errors() -> None:
    assert _report(V.IN_USE, attached_now="i-1") == (
        V.IN_USE, [("attached", "to instance i-1 as vdb")])
    assert _report(V.AVAILABLE, stored="in-use", attached_before="i-1") == (
        V.AVAILABLE, [("detached", "from instance i-1")])
    assert _report(V.IN_USE, stored="in-use", attached_before="i-1", attached_now="i-1") == (
        V.IN_USE, [])
    # An error is told once per reason, not at every report.
    assert _report(V.ERROR, reason="disk gone") == (V.ERROR, [("error", "disk gone")])
    assert _report(V.ERROR, reason="disk gone", stored="error",
                   stored_reason="disk gone") == (V.ERROR, [])


def test_a_volume_being_deleted_shows_deleting_unless_deleting_it_failed() -> None:
    assert _report(V.AVAILABLE, being_deleted=True)[0] == V.DELETING
    assert _report(V.DETACHING, being_deleted=True)[0] == V.DELETING
    assert _report(V.ERROR, being_deleted=True, reason="rm failed") == (
        V.ERROR, [("error", "rm failed")])


def test_a_snapshot_report_is_stored_unless_it_is_being_deleted() -> None:
    S = SnapshotState
    assert snapshot_after_report("creating", S.AVAILABLE) == (True, "available")
    assert snapshot_after_report("available", S.AVAILABLE) == (True, None)
    assert snapshot_after_report("creating", S.CREATING) == (True, None)
    assert snapshot_after_report("creating", S.ERROR) == (True, "error")
    assert snapshot_after_report("deleting", S.AVAILABLE) == (False, None)
