"""The bare-metal conductor's power actions: stop, start and reboot of a bm1 instance.

`cumulo instance stop|start|reboot` of a bare-metal server records the request as for a VM
(services.instances.act: the instance `stopping`, `starting` or `rebooting`, its desired
power), in the request's own transaction. The conductor finds it at its next pass (an
`active` node whose instance shows one of these states) and applies it over Redfish:

  stopping   GracefulShutdown (ACPI: the OS shuts down and flushes its disks), then ForceOff
             if the machine is still on after `[baremetal] stop_timeout_s`, as a VM's stop
             does: a stop always ends, and a well-behaved OS loses nothing → stopped
  starting   On → running
  rebooting  ForceRestart, as a VM's reboot is a reset (an OS that ignores ACPI, or hangs,
             is rebooted all the same) → running

The instance's state follows what the BMC then reports (on: running, off: stopped). A BMC
that fails: the instance shows the state the machine is in (its power read again) with the
reason, and its desired power is set to match, so nothing is left half-done and nothing is
retried behind the user's back; a power that cannot be read either: `error`.

The node records the action under way before its Redfish calls (power_action, with its
updated_at: a lease, see lease_s), so two API processes never apply one request twice; a
conductor that died mid-action is followed by another once the lease has run out (stop and
start are idempotent; a reboot is then done again). The result is written only if the node
is still at the generation the claim wrote (a delete meanwhile wins) and the instance still
at the one read (a newer request of the user wins: the next pass applies it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import ColumnElement, and_, not_, select, update
from sqlalchemy.orm import Session

from cumulo.baremetal.redfish import Bmc, BmcError, PowerAction
from cumulo.config import Settings
from cumulo.db.tables import BaremetalNodeRow, InstanceRow
from cumulo.domain import baremetal as bm
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.services import events, metering
from cumulo.services.baremetal_nodes import PASSWORD, compare_and_set
from cumulo.services.context import Services

if TYPE_CHECKING:  # the conductor imports this module
    from cumulo.services.baremetal_conductor import BmcFactory, Work

log = structlog.get_logger("cumulo.baremetal")

# A power action's Redfish calls fit in this, plus a stop's graceful wait (lease_s).
BASE_LEASE_S = 150.0
REASON_LIMIT = 500
S = InstanceState
# The instance states that ask the conductor for a power action, and the state each ends in.
_ENDS = {S.STOPPING: S.STOPPED, S.STARTING: S.RUNNING, S.REBOOTING: S.RUNNING}
_WORD = {S.STOPPING: "stop", S.STARTING: "start", S.REBOOTING: "reboot"}


@dataclass(frozen=True)
class PowerWork:
    node: Work
    instance_id: str
    instance_state: InstanceState
    instance_generation: int


def lease_s(settings: Settings) -> float:
    """How long a claimed node is left to its conductor: a stop's grace, then ForceOff's
    wait (redfish.POWER_WAIT_S) and the BMC's answers."""
    return BASE_LEASE_S + settings.baremetal.stop_timeout_s


def pending(svc: Services, work: Callable[[BaremetalNodeRow], Work]) -> list[PowerWork]:
    """The active nodes whose instance asks for a power action (none under way elsewhere)."""
    return active_nodes(svc, work, _ENDS, not_(leased(svc.settings)))


def active_nodes(svc: Services, work: Callable[[BaremetalNodeRow], Work],
                 states: Iterable[InstanceState], *where: ColumnElement[bool]
                 ) -> list[PowerWork]:
    """The active nodes whose instance is in one of `states` (and `where` holds)."""
    with svc.db.session() as s:
        rows = s.execute(
            select(BaremetalNodeRow, InstanceRow.state, InstanceRow.generation)
            .join(InstanceRow, InstanceRow.id == BaremetalNodeRow.instance_id)
            .where(BaremetalNodeRow.state == bm.NodeState.ACTIVE.value,
                   InstanceRow.state.in_([st.value for st in states]), *where))
        return [PowerWork(work(node), node.instance_id or "", InstanceState(state), gen)
                for node, state, gen in rows]


def apply(svc: Services, p: PowerWork, bmc: BmcFactory = Bmc) -> str:
    """Claim the node, do the action over Redfish, write what the BMC reports; returns the
    instance's state after it, or "stale" when another writer moved first."""
    w, want = p.node, p.instance_state
    with svc.db.session() as s:
        if not compare_and_set(s, w.id, w.generation, power_action=_WORD[want]):
            return "stale"
    generation = w.generation + 1
    power: str | None
    try:
        if w.address is None:
            raise BmcError(f"{PASSWORD} does not open with this API's server key")
        power, note = _act(svc, bmc(w.address), want)
        if power != ("off" if want is S.STOPPING else "on"):
            raise BmcError(f"the machine is still {power} after the {_WORD[want]}")
        state, reason, ok = _ENDS[want], note, True
    except BmcError as e:
        power, state = _read_power(bmc, w)
        reason, ok = f"{_WORD[want]} failed: {e}"[:REASON_LIMIT], False
        log.warning("baremetal_power_failed", node=w.name, instance=p.instance_id, error=reason)
    with svc.db.session() as s:
        if not compare_and_set(s, w.id, generation, power_action=None,
                               **({"power_state": power} if power else {})):
            release(s, w.id, _WORD[want])  # deleted meanwhile: its cleaning need not wait
            return "stale"
        row = s.get(InstanceRow, p.instance_id, with_for_update=True)
        if row is None or row.generation != p.instance_generation:
            return "stale"  # the user asked for something else meanwhile: the next pass
        record(s, svc, row, state, reason, None if ok else f"{_WORD[want]}_failed")
    log.info("baremetal_power_done", node=w.name, instance=p.instance_id, state=state.value)
    return state.value


def release(s: Session, node_id: str, action: str) -> None:
    """Drop this conductor's claim after its Redfish calls, whatever moved the node meanwhile
    (its generation is left alone, as it is not a step of the node's own)."""
    s.execute(update(BaremetalNodeRow).where(BaremetalNodeRow.id == node_id,
                                             BaremetalNodeRow.power_action == action)
              .values(power_action=None))


def leased(settings: Settings) -> ColumnElement[bool]:
    """Nodes whose machine a conductor is powering now (their lease has not run out;
    updated_at is the real time: services.baremetal_nodes)."""
    return and_(BaremetalNodeRow.power_action.is_not(None),
                BaremetalNodeRow.updated_at
                >= datetime.now(UTC) - timedelta(seconds=lease_s(settings)))


def _act(svc: Services, b: Bmc, want: InstanceState) -> tuple[str, str]:
    """The Redfish calls of `want`: the power state they end in, and a note for the user."""
    if want is S.STARTING:
        return b.power(PowerAction.ON), ""
    if want is S.REBOOTING:
        return b.power(PowerAction.REBOOT), ""
    grace = svc.settings.baremetal.stop_timeout_s
    if b.power(PowerAction.SOFT_OFF, wait_s=grace) == "off":
        return "off", ""
    return b.power(PowerAction.OFF), (f"the OS did not shut down within {grace:g} s: "
                                      "powered off (ForceOff)")


def _read_power(bmc: BmcFactory, w: Work) -> tuple[str | None, InstanceState]:
    """After a failed action: the machine's power as the BMC reads it, and the state it
    means for the instance (error when the BMC cannot tell)."""
    if w.address is None:
        return None, S.ERROR
    try:
        power = bmc(w.address).power_state()
    except BmcError:
        return None, S.ERROR
    return power, {"on": S.RUNNING, "off": S.STOPPED}.get(power, S.ERROR)


def record(s: Session, svc: Services, row: InstanceRow, state: InstanceState, reason: str,
           failed: str | None, *, guest: bool = False, detail: str | None = None) -> None:
    """The instance shows `state` and `reason`; its desired power matches what it runs.
    `failed`: the event's kind when the action failed; `guest`: the server powered itself
    off (services.baremetal_power_sync); `detail`: the event's, when not the reason."""
    old = row.state
    row.state, row.state_reason = state.value, reason
    if state is not S.ERROR:
        row.desired_power = (DesiredPower.STOPPED if state is S.STOPPED
                             else DesiredPower.RUNNING).value
    row.generation += 1
    metering.instance(s, svc.settings, metering.now(svc), row.project_id, row.id, row.name,
                      row.state, row.type_name, row.vcpus, row.ram_mib, row.disk_gib)
    kind = ((failed, "system", reason) if failed is not None
            else events.instance_transition(old, state.value, reason, guest=guest))
    if kind is not None and detail is not None:
        kind = (kind[0], kind[1], detail)
    if kind is not None:
        events.add(s, [events.Event(row.project_id, "instance", row.id, row.name,
                                    kind[0], kind[1], kind[2])])
