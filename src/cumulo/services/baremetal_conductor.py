"""The bare-metal conductor: moves nodes through their states by talking to their BMCs.

It runs inside each API process (see api.app), not as a component of its own: it needs the
database (agents never open it) and reaches BMCs over the management network as the control
plane does, and one process fewer is one thing fewer for `cumulo up` to start and watch.
Several API processes may each run one: every step reads a node, talks to its BMC with no
transaction open, and writes its result only if the node's `generation` is still the one it
read (services.baremetal_nodes.compare_and_set). Of two conductors the second's write is
dropped, as is a step's whose node was deleted meanwhile. Steps are idempotent (reading a
BMC, powering off what is off), and the state that says which step comes next is in the
database, so a conductor that dies mid-step is simply followed by the next pass, here or in
another process.

  enroll      read the power state: the BMC answers with these credentials → manageable
  manageable  → inspecting (cumulo inspects every node it manages)
  inspecting  read the facts; they match the enrollment → available, else → error
  deploying   the deploy's steps (services.baremetal_deploy_steps) → active, or error
  deleting    power the machine off (best effort: a dead BMC does not keep a node) → removed
  cleaning    (its instance deleted) forget the instance, wipe the disk with the deploy ramdisk
              in wipe mode, power off (services.baremetal_clean_steps) → available; anything
              failing here → error (the instance is forgotten all the same)
  active      its instance's stop, start or reboot, when asked (services.baremetal_power);
              every few passes its power read, a change made outside cumulo (the OS powered
              off) shown on its instance (services.baremetal_power_sync)
A BMC that does not answer sends the node to `error` with the reason in last_error.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import structlog
from sqlalchemy import delete, not_, select

from cumulo.baremetal.redfish import Bmc, BmcAddress, BmcError, PowerAction
from cumulo.db.tables import BaremetalNodeRow
from cumulo.domain import baremetal as bm
from cumulo.domain.arch import Arch
from cumulo.domain.errors import CumuloError
from cumulo.services import baremetal_clean_steps as clean_steps
from cumulo.services import baremetal_deploy_steps as deploy_steps
from cumulo.services import baremetal_power
from cumulo.services import baremetal_power_sync as power_sync
from cumulo.services.baremetal_nodes import PASSWORD, compare_and_set
from cumulo.services.context import Services
from cumulo.services.sealed import unseal

log = structlog.get_logger("cumulo.baremetal")

PARALLEL_NODES = 8  # BMCs talked to at once in one pass
ERROR_LIMIT = 500  # = the last_error column

BmcFactory = Callable[[BmcAddress], Bmc]


@dataclass(frozen=True)
class Work:
    """A node as one step reads it: its state, the generation it was read at, how to reach
    its BMC (the password unsealed) and what was enrolled."""

    id: str
    name: str
    state: bm.NodeState
    generation: int
    instance_id: str | None
    address: BmcAddress | None  # None: its password could not be unsealed
    enrolled: bm.Enrolled
    updated_at: datetime
    deploy_step: str | None = None  # in `deploying` (domain.baremetal.DeployStep)
    deploy_deadline: datetime | None = None
    deploy_report: str | None = None


def pending(svc: Services) -> list[Work]:
    """The nodes the conductor has a step for."""
    with svc.db.session() as s:
        rows = s.scalars(select(BaremetalNodeRow).where(
            BaremetalNodeRow.state.in_([st.value for st in bm.CONDUCTOR_STATES]),
            # a stop/start/reboot under way in another process: cleaned once it is done
            not_(baremetal_power.leased(svc.settings))))
        return [_work(svc, r) for r in rows]


def run_pass(svc: Services, bmc: BmcFactory = Bmc, sync_power: bool = False
             ) -> dict[str, str]:
    """One pass over every node with work to do; {node name: where it ended} (for a power
    action of its instance, or a power sync: the instance's state after it). With
    `sync_power` (every power_sync.SYNC_EVERY_PASSES passes), the power of the active nodes
    with nothing under way is read too (services.baremetal_power_sync)."""
    work = pending(svc)
    power = baremetal_power.pending(svc, lambda r: _work(svc, r))
    watched = power_sync.pending(svc, lambda r: _work(svc, r)) if sync_power else []
    if not work and not power and not watched:
        return {}
    with ThreadPoolExecutor(max_workers=min(PARALLEL_NODES,
                                            len(work) + len(power) + len(watched)),
                            thread_name_prefix="cumulo-bm") as pool:
        # All submitted at once (map does), collected after: no node is in two lists (the
        # power actions' instances are stopping, starting or rebooting; the synced ones
        # running or stopped; the others' nodes are not active).
        stepped = pool.map(lambda w: drive(svc, w, bmc), work)
        powered = pool.map(lambda p: baremetal_power.apply(svc, p, bmc), power)
        synced = pool.map(lambda p: power_sync.sync(svc, p, bmc), watched)
        ends, power_ends, sync_ends = list(stepped), list(powered), list(synced)
    return ({w.name: end for w, end in zip(work, ends, strict=True)}
            | {p.node.name: end for p, end in zip(power, power_ends, strict=True)}
            | {p.node.name: end for p, end in zip(watched, sync_ends, strict=True)})


def drive(svc: Services, w: Work, bmc: BmcFactory = Bmc) -> str:
    """Step `w` until it needs nothing more from the conductor (or lost a race); returns
    its last state, "deleted", or "stale" when another writer moved it first."""
    while w.state in bm.CONDUCTOR_STATES:
        after = step(svc, w, bmc)
        if after is None:
            return "deleted" if w.state is bm.NodeState.DELETING else "stale"
        if after is w:  # it waits (a deploy's report): the next pass looks again
            break
        w = after
    return w.state.value


def step(svc: Services, w: Work, bmc: BmcFactory = Bmc) -> Work | None:
    """One step of node `w`: its new snapshot (`w` itself when it waits), or None when it
    is gone or was moved by another writer meanwhile."""
    if w.state is bm.NodeState.DEPLOYING:
        return deploy_steps.step(svc, w, bmc)
    if w.state is bm.NodeState.DELETING:
        _power_off_before_forgetting(w, bmc)
        with svc.db.session() as s:
            gone = s.execute(delete(BaremetalNodeRow).where(
                BaremetalNodeRow.id == w.id, BaremetalNodeRow.generation == w.generation))
            if gone.rowcount == 1:  # type: ignore[attr-defined]
                log.info("baremetal_node_deleted", node=w.name)
        return None
    if w.state is bm.NodeState.CLEANING:
        return clean_steps.step(svc, w, bmc)
    if w.state is bm.NodeState.MANAGEABLE:
        return _write(svc, w, bm.NodeState.INSPECTING)
    if w.address is None:
        return _write(svc, w, bm.NodeState.ERROR,
                      last_error=f"{PASSWORD} does not open with this API's server key: "
                                 "enroll the node again")
    try:
        if w.state is bm.NodeState.ENROLL:
            power = bmc(w.address).power_state()
            return _write(svc, w, bm.NodeState.MANAGEABLE, power_state=power)
        facts = bmc(w.address).facts()
    except BmcError as e:
        log.warning("baremetal_bmc_failed", node=w.name, state=w.state.value, error=str(e))
        return _write(svc, w, bm.NodeState.ERROR, last_error=str(e)[:ERROR_LIMIT])
    state, error = bm.after_inspection(w.enrolled, facts)
    found = {k: v for k, v in asdict(facts).items() if k not in ("power_state", "mac")}
    return _write(svc, w, state, last_error=error, power_state=facts.power_state, facts=found,
                  mac=facts.mac)


def _power_off_before_forgetting(w: Work, bmc: BmcFactory) -> None:
    if w.address is None:
        return
    try:
        bmc(w.address).power(PowerAction.OFF)
    except BmcError as e:  # the node goes anyway: an operator deletes dead hardware too
        log.warning("baremetal_delete_power_off_failed", node=w.name, error=str(e))


def _write(svc: Services, w: Work, state: bm.NodeState, *, last_error: str | None = None,
           **values: object) -> Work | None:
    with svc.db.session() as s:
        if not compare_and_set(s, w.id, w.generation, state=state.value,
                               last_error=last_error, **values):
            return None
    if state is bm.NodeState.ERROR:
        log.warning("baremetal_node_error", node=w.name, error=last_error)
    return replace(w, state=state, generation=w.generation + 1, updated_at=datetime.now(UTC))


def _work(svc: Services, r: BaremetalNodeRow) -> Work:
    address: BmcAddress | None = BmcAddress(r.redfish_url, r.redfish_system, r.bmc_username)
    if r.bmc_password is not None:
        try:
            address = BmcAddress(r.redfish_url, r.redfish_system, r.bmc_username,
                                 unseal(svc, r.bmc_password, r.id, PASSWORD))
        except CumuloError:
            address = None
    return Work(id=r.id, name=r.name, state=bm.NodeState(r.state), generation=r.generation,
                instance_id=r.instance_id, address=address,
                enrolled=bm.Enrolled(Arch(r.arch), r.vcpus, r.ram_mib, r.disk_gib),
                updated_at=r.updated_at, deploy_step=r.deploy_step,
                deploy_deadline=r.deploy_deadline, deploy_report=r.deploy_report)
