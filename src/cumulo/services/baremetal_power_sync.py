"""The bare-metal conductor's power sync: a server whose power changed without a request.

A VM's host agent sees its QEMU stop when the guest powers off; a bare-metal server has no
agent, so the conductor reads the power state of each `active` node whose instance is
`running` or `stopped` (nothing under way) every SYNC_EVERY_PASSES passes (Ironic's
periodic power-state sync): a server that its OS powered off (`poweroff`, `shutdown -h`),
or that went off at its BMC, shows `stopped` (event `stopped` by the guest, as a VM's
guest-initiated stop), its desired power `stopped` so nothing starts it behind the user's
back; one powered on outside cumulo (its BMC's console, a power button) shows `running`.

One BMC read per node, no transaction open meanwhile, the same bounded pool as the other
steps. A BMC that does not answer changes nothing (a transient failure must not stop a
running server's billing or send it to error; the next sync reads it again). The result is
written only if the node is still at the generation read (no power action claimed, no
delete meanwhile) and the instance still at its generation (a request made meanwhile wins).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from cumulo.baremetal.redfish import Bmc, BmcError
from cumulo.db.tables import BaremetalNodeRow, InstanceRow
from cumulo.domain.instance import InstanceState
from cumulo.services import baremetal_power
from cumulo.services.baremetal_nodes import compare_and_set
from cumulo.services.baremetal_power import PowerWork
from cumulo.services.context import Services

if TYPE_CHECKING:  # the conductor imports this module
    from cumulo.services.baremetal_conductor import BmcFactory, Work

log = structlog.get_logger("cumulo.baremetal")

SYNC_EVERY_PASSES = 5  # the conductor passes every 2 s: a power change is seen within ~10 s
S = InstanceState
_MEANS = {"on": S.RUNNING, "off": S.STOPPED}
OFF_REASON = "the server powered off without a request (its OS, or at its BMC)"
ON_DETAIL = "the server powered on without a request (at its BMC)"


def pending(svc: Services, work: Callable[[BaremetalNodeRow], Work]) -> list[PowerWork]:
    """The active nodes whose instance is running or stopped, no power action under way."""
    return baremetal_power.active_nodes(svc, work, _MEANS.values(),
                                        BaremetalNodeRow.power_action.is_(None))


def sync(svc: Services, w: PowerWork, bmc: BmcFactory = Bmc) -> str:
    """Read the node's power; returns the instance's state after it ("stale" when another
    writer moved first)."""
    node = w.node
    if node.address is None:
        return w.instance_state.value
    try:
        power = bmc(node.address).power_state()
    except BmcError as e:
        log.warning("baremetal_power_sync_failed", node=node.name, error=str(e))
        return w.instance_state.value
    now = _MEANS.get(power)
    if now is None or now is w.instance_state:
        return w.instance_state.value
    with svc.db.session() as s:
        # the node first, then its instance: the order of the power actions' writes
        if not compare_and_set(s, node.id, node.generation, power_state=power):
            return "stale"
        row = s.get(InstanceRow, w.instance_id, with_for_update=True)
        if row is None or row.generation != w.instance_generation:
            return "stale"  # a request made meanwhile: the next pass applies it
        if now is S.STOPPED:
            baremetal_power.record(s, svc, row, now, OFF_REASON, None, guest=True)
        else:
            baremetal_power.record(s, svc, row, now, "", None, detail=ON_DETAIL)
    log.info("baremetal_power_changed", node=node.name, instance=w.instance_id, power=power)
    return now.value
