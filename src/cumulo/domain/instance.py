"""Instance states and the transitions a user may ask for.

Two views of an instance are kept apart: the DESIRED power state (what the user asked for,
written by the API) and the observed STATE (what the host agent reports). The state machine
below decides which user requests make sense in which observed state; the agent's reports
may move the state anywhere (the hypervisor is the source of truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cumulo.domain.errors import Conflict


class InstanceState(StrEnum):
    PENDING = "pending"  # recorded and placed; the host has not started it yet
    STARTING = "starting"
    RUNNING = "running"
    # The hypervisor froze it (a disk write failed on the host, e.g. a full disk): nothing is
    # lost, and it runs on where it stopped once the cause is gone. Reboot and stop work.
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    DELETING = "deleting"
    ERROR = "error"
    # Shown, never stored: the instance's host is down, so nobody knows (see shown_state).
    UNKNOWN = "unknown"


class DesiredPower(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class Action(StrEnum):
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    DELETE = "delete"


S = InstanceState
# Which observed states accept which request. Anything else is a 409 with the reason below.
_ALLOWED: dict[Action, frozenset[InstanceState]] = {
    Action.START: frozenset({S.STOPPED, S.ERROR, S.STOPPING}),
    Action.STOP: frozenset({S.PENDING, S.STARTING, S.RUNNING, S.PAUSED, S.REBOOTING, S.ERROR}),
    Action.REBOOT: frozenset({S.RUNNING, S.PAUSED}),
    Action.DELETE: frozenset(set(S) - {S.DELETING}),
}
# The state shown right after the request is accepted (the agent then converges).
_NEXT: dict[Action, InstanceState] = {
    Action.START: S.STARTING,
    Action.STOP: S.STOPPING,
    Action.REBOOT: S.REBOOTING,
    Action.DELETE: S.DELETING,
}
_DESIRED: dict[Action, DesiredPower | None] = {
    Action.START: DesiredPower.RUNNING,
    Action.STOP: DesiredPower.STOPPED,
    Action.REBOOT: None,  # stays running; a reboot counter tells the agent
    Action.DELETE: DesiredPower.DELETED,
}


def check_transition(name: str, state: InstanceState, action: Action) -> InstanceState:
    """Return the state to show after `action`, or raise Conflict saying why it is refused."""
    if state not in _ALLOWED[action]:
        hint = {
            Action.START: ("it is paused by the hypervisor and resumes by itself once the"
                           " cause is gone (see its reason); reboot or stop it"
                           if state is S.PAUSED else "it is already running or on its way"),
            Action.STOP: "it is not running",
            Action.REBOOT: "only a running or paused instance can be rebooted",
            Action.DELETE: "it is already being deleted",
        }[action]
        raise Conflict(
            f"cannot {action.value} instance {name!r} while it is {state.value}: {hint}",
            code="invalid_state",
        )
    return _NEXT[action]


def desired_after(action: Action, current: DesiredPower) -> DesiredPower:
    new = _DESIRED[action]
    return current if new is None else new


def shown_state(state: str, reason: str, host_up: bool | None) -> tuple[str, str]:
    """The state and reason a user sees. While the instance's host is down (`host_up`
    False; None: no host) its last report may no longer be true: it shows as unknown, with the
    state last reported, never as silently running. The stored state is kept, so that the
    instance shows its real state again as soon as its host is back (its agent then reports
    any change, e.g. a VM that died meanwhile)."""
    if host_up is False:
        return (InstanceState.UNKNOWN.value,
                f"its host is down (no word from its agent); last reported {state}")
    return (state, reason)


@dataclass(frozen=True)
class Recorded:
    """What the API holds of an instance when its agent reports on it."""

    state: str
    reason: str
    desired: str
    reboot_seq: int  # reboots asked for
    done_seq: int  # reboots the agent has done


@dataclass(frozen=True)
class Seen:
    """What the agent observed (its reason already cut to one line)."""

    state: InstanceState  # never the agent's "deleted": that is handled before
    reason: str
    guest_initiated: bool  # the guest powered itself off, nobody asked
    reboot_done_seq: int | None


@dataclass(frozen=True)
class Outcome:
    """An agent's report applied to an instance: what to write and who must know."""

    state: str
    reason: str
    desired: str
    done_seq: int
    changed: bool  # something above differs from Recorded: write it
    # The agent's decisions read what changed (cumulo.agent.decide): hand it the new view at
    # once, not at its next poll, or within one observe period it acts on the old view again
    # (e.g. reboots a second time).
    agent_must_know: bool
    observed_change: bool  # the state or reason the user sees moved (an event may tell it)


def _agent_decides_on(state: str) -> bool:
    """States the agent's decisions read: a crashed VM is started again only while the API
    shows it starting; error and rebooting are shown to be kept."""
    return state in (S.STARTING.value, S.ERROR.value, S.REBOOTING.value)


def apply_report(old: Recorded, seen: Seen) -> Outcome:
    """The instance after its agent reported `seen`.

    A running VM whose reboot is still owed shows `rebooting`. A guest that powered itself off
    turns the user's wish to `stopped` (else the agent would start it again). While a delete is
    pending the state stays `deleting` until the VM is reported gone."""
    desired, done_seq = old.desired, old.done_seq
    changed = must_know = observed = False
    if seen.reboot_done_seq is not None and seen.reboot_done_seq > done_seq:
        done_seq = seen.reboot_done_seq
        changed = must_know = True
    state, reason = old.state, old.reason
    if desired != DesiredPower.DELETED.value:
        now = seen.state
        if now is S.RUNNING and done_seq < old.reboot_seq:
            now = S.REBOOTING
        if seen.guest_initiated and now is S.STOPPED:
            desired = DesiredPower.STOPPED.value
            changed = must_know = True
        if old.state != now.value or old.reason != seen.reason:
            must_know |= _agent_decides_on(old.state) or _agent_decides_on(now.value)
            state, reason = now.value, seen.reason
            changed = observed = True
    return Outcome(state, reason, desired, done_seq, changed, must_know, observed)
