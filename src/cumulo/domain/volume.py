"""Volume and snapshot states, the requests a user may make in each, and how a host's report
moves them (pure rules: services/volumes.py asks them, services/agents.py applies reports).

As for instances (domain/instance.py), what the user asked for (a volume's `desired`, its
`want_instance_id`) is kept apart from what the host reports (`state`, `attached_to`): the
host is the source of truth for the state, except that a volume or snapshot being deleted
shows `deleting` until the host reports it gone (or fails to delete it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cumulo.domain.errors import Conflict


class VolumeState(StrEnum):
    CREATING = "creating"  # its file is being made (from a snapshot: once that exists)
    AVAILABLE = "available"  # its file exists and no VM holds it
    ATTACHING = "attaching"  # asked for; the host has not plugged it yet
    IN_USE = "in-use"  # held by the VM it is attached to
    DETACHING = "detaching"  # the guest was asked to release it and has not yet
    DELETING = "deleting"  # shown from the delete request until the host reports it gone
    ERROR = "error"  # the host could not do what was asked (the reason says what)


class SnapshotState(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    DELETING = "deleting"
    ERROR = "error"


V = VolumeState
# What the hosts may report (DELETED: the file is gone): anything else is refused.
REPORTABLE_VOLUME = frozenset({V.CREATING, V.AVAILABLE, V.ATTACHING, V.IN_USE, V.DETACHING,
                               V.ERROR})
REPORTABLE_SNAPSHOT = frozenset({SnapshotState.CREATING, SnapshotState.AVAILABLE,
                                 SnapshotState.ERROR})


class VolumeAction(StrEnum):
    ATTACH = "attach"
    RESIZE = "resize"
    SNAPSHOT = "snapshot"


# The states in which each request is accepted (detach and delete are decided by whether the
# volume is attached or asked to be: see services/volumes.py).
_ALLOWED: dict[VolumeAction, frozenset[VolumeState]] = {
    VolumeAction.ATTACH: frozenset({V.AVAILABLE, V.ERROR}),
    VolumeAction.RESIZE: frozenset({V.AVAILABLE, V.IN_USE}),
    VolumeAction.SNAPSHOT: frozenset({V.AVAILABLE, V.IN_USE}),
}


def check_volume(name: str, state: str, action: VolumeAction, being_deleted: bool) -> None:
    """Raise Conflict (invalid_state) when `action` is refused in `state`."""
    if being_deleted:
        raise Conflict(f"volume {name!r} is being deleted", code="invalid_state")
    if state not in _ALLOWED[action]:
        raise Conflict(f"cannot {action.value} volume {name!r} while it is {state}",
                       code="invalid_state")


def check_snapshot_source(name: str, state: str) -> None:
    """A volume is made from a snapshot only once the snapshot is there."""
    if state != SnapshotState.AVAILABLE:
        raise Conflict(f"snapshot {name!r} is {state}", code="invalid_state")


def check_snapshot_delete(name: str, state: str) -> None:
    if state == SnapshotState.CREATING:
        raise Conflict(f"snapshot {name!r} is still being taken", code="invalid_state")


@dataclass(frozen=True)
class VolumeReport:
    """What a report makes of a volume: the state to store, and the events to record."""

    state: VolumeState
    events: tuple[tuple[str, str], ...]  # (kind, detail)


def volume_after_report(*, reported: VolumeState, reason: str, being_deleted: bool,
                        stored: str, stored_reason: str, attached_before: str | None,
                        attached_now: str | None, device: str | None) -> VolumeReport:
    """The state shown after the host reported `reported` (DELETED is handled by the caller:
    the row goes once its deletion was asked)."""
    events: list[tuple[str, str]] = []
    if attached_now != attached_before:
        if attached_before:
            events.append(("detached", f"from instance {attached_before}"))
        if attached_now:
            events.append(("attached", f"to instance {attached_now} as {device}"))
    if reported is V.ERROR and (stored != V.ERROR or stored_reason != reason):
        events.append(("error", reason))
    # Being deleted, it shows so until gone, unless the host says deleting it failed.
    state = V.DELETING if being_deleted and reported is not V.ERROR else reported
    return VolumeReport(state, tuple(events))


def snapshot_after_report(stored: str, reported: SnapshotState) -> tuple[bool, str | None]:
    """(whether to store the report, the event kind it makes). A snapshot being deleted keeps
    showing `deleting` whatever the host says of it meanwhile."""
    if stored == SnapshotState.DELETING:
        return False, None
    changed = reported != stored and reported in (SnapshotState.AVAILABLE, SnapshotState.ERROR)
    return True, reported.value if changed else None
