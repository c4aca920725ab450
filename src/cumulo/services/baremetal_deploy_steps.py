"""The bare-metal conductor's deploy: the steps that take a node in `deploying` to `active`.

  (none)     issue a one-time token (its sha256 and the deadline on the node: step booting),
             then over Redfish: power off, insert the deploy ISO (the BMC fetches it from the
             API with the token), boot once from CD, power on → waiting
  waiting    the deploy ramdisk fetches the image, checks its sha256, writes the disk and
             reports (services.baremetal_deploy records it); ok → finishing; failed, or no
             report by the deadline → error
  finishing  power off, eject, boot from disk, power on → node `active`, instance `running`

Every step is written with the node's generation (compare and set), so of two conductors
one applies it, and a delete made meanwhile wins. A step under way (booting, finishing) is
recorded before its BMC calls: when its conductor died, the next one starts it again once
the lease has run out (a new token; the machine powered off first), so an API restart
resumes a deploy, and two API processes never drive one machine at once.

A failed deploy powers the node off (best effort), sends it to `error` with `deploy: <why>`
and the instance to `error` with the reason; it is never `active` half-written. Deleting
the instance cleans the node (services.baremetal_conductor).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from cumulo.baremetal.redfish import Bmc, BmcError, PowerAction
from cumulo.db.tables import InstanceRow
from cumulo.domain import baremetal as bm
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import InstanceState
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_ports, events, metering
from cumulo.services.baremetal_nodes import PASSWORD, compare_and_set
from cumulo.services.context import Services

if TYPE_CHECKING:  # the conductor imports this module
    from cumulo.services.baremetal_conductor import BmcFactory, Work

log = structlog.get_logger("cumulo.baremetal")

# A step under way (booting, finishing) is left to its conductor this long: its BMC calls
# (a power action waits up to a minute, the BMC's media download half a minute) fit in it.
LEASE_S = 180.0
ERROR_LIMIT = 500
_CLEARED: dict[str, Any] = {"deploy_step": None, "deploy_token": None,
                            "deploy_deadline": None, "deploy_report": None}


def step(svc: Services, w: Work, bmc: BmcFactory) -> Work | None:
    """One deploy step of node `w`: its new snapshot, `w` itself when it waits (for the
    report, or for another conductor's step under way), None when another writer moved it."""
    now = svc.clock()
    s = w.deploy_step
    if leased(w):
        return w
    if s == bm.DeployStep.FINISHING or (s == bm.DeployStep.WAITING
                                         and w.deploy_report == bm.REPORT_OK):
        return _finish(svc, w, bmc)
    if s == bm.DeployStep.WAITING:
        if w.deploy_report is not None:
            return _fail(svc, w, bmc, bm.report_failure(w.deploy_report) or "")
        if w.deploy_deadline is not None and now >= w.deploy_deadline:
            return _fail(svc, w, bmc, "no report from the deploy ramdisk within "
                         f"{svc.settings.baremetal.deploy_timeout_s} s")
        return w
    return _boot(svc, w, bmc)


def leased(w: Work) -> bool:
    """Whether a step under way (booting, finishing) is still its conductor's."""
    return w.deploy_step in (bm.DeployStep.BOOTING, bm.DeployStep.FINISHING) and \
        datetime.now(UTC) - w.updated_at < timedelta(seconds=LEASE_S)
    # (updated_at is written with the real time: services.baremetal_nodes)


def boot_media(b: Bmc, url: str) -> None:
    """Boot the node once from the ISO at `url`: off (a restarted step: the machine may run
    an older ISO), media in, boot once from CD, on."""
    b.power(PowerAction.OFF)
    b.insert_media(url)
    b.set_boot("cd", once=True)
    if b.power(PowerAction.ON) != "on":
        raise BmcError("the node did not power on")


def cannot_boot(svc: Services, w: Work, what: str) -> str | None:
    """Why the deploy ISO cannot be booted for `what` (deploy, wipe) now, or None."""
    if w.deploy_deadline is not None and svc.clock() >= w.deploy_deadline:
        return f"the {what} did not boot within {svc.settings.baremetal.deploy_timeout_s} s"
    if w.address is None:
        return f"{PASSWORD} does not open with this API's server key"
    return deploy.urls_configured(svc)


def _boot(svc: Services, w: Work, bmc: BmcFactory) -> Work | None:
    """Start (or start again) the deploy: a new token, the ISO in, boot once from CD, on."""
    why = cannot_boot(svc, w, "deploy")
    if why is None:
        try:
            with svc.db.session() as s:
                deploy.whole_disk(deploy.image_of(s, w.instance_id))  # built here if need be
        except CumuloError as e:
            why = e.message
    address = w.address
    if why is not None or address is None:
        return _fail(svc, w, bmc, why or "")
    token, digest = deploy.new_token()
    deadline = w.deploy_deadline or svc.clock() + timedelta(
        seconds=svc.settings.baremetal.deploy_timeout_s)
    booting = _write(svc, w, "deploying: booting the deploy ramdisk from virtual media",
                     deploy_step=bm.DeployStep.BOOTING.value, deploy_token=digest,
                     deploy_deadline=deadline, deploy_report=None)
    if booting is None:
        return None
    w = booting
    try:
        boot_media(bmc(address), deploy.iso_url(svc, token))
    except BmcError as e:
        return _fail(svc, w, bmc, str(e))
    log.info("baremetal_deploy_booted", node=w.name, instance=w.instance_id)
    return _write(svc, w, "deploying: the node writes the image to its disk",
                  deploy_step=bm.DeployStep.WAITING.value, power_state="on")


def _finish(svc: Services, w: Work, bmc: BmcFactory) -> Work | None:
    """The image is on the disk: media out, boot from the disk, power cycle; `active`."""
    after = _write(svc, w, "deploying: booting the node from its disk",
                   deploy_step=bm.DeployStep.FINISHING.value)
    if after is None or after.address is None:
        return None if after is None else _fail(svc, after, bmc, "the BMC password is lost")
    try:
        b = bmc(after.address)
        b.power(PowerAction.OFF)
        b.eject_media()
        b.set_boot("disk", once=False)
        if b.power(PowerAction.ON) != "on":
            raise BmcError("the node did not power on from its disk")
    except BmcError as e:
        return _fail(svc, after, bmc, str(e))
    done = _write(svc, after, "", state=bm.NodeState.ACTIVE, instance_state=InstanceState.RUNNING,
                  power_state="on", **_CLEARED)
    if done is not None:  # its port host plugs its NIC into the instance's network now
        baremetal_ports.notify_port_host(svc, w.id)
    log.info("baremetal_node_deployed", node=w.name, instance=w.instance_id)
    return done


def _fail(svc: Services, w: Work, bmc: BmcFactory, why: str) -> Work | None:
    """Power the node off and take its media out (best effort), then `error` for the node
    (`deploy: <why>`) and its instance (the reason)."""
    power = power_off_and_eject(w, bmc)
    reason = f"{bm.DEPLOY_FAILED}{why}"[:ERROR_LIMIT]
    log.warning("baremetal_deploy_failed", node=w.name, instance=w.instance_id, error=reason)
    return _write(svc, w, reason, state=bm.NodeState.ERROR, instance_state=InstanceState.ERROR,
                  last_error=reason, **power, **_CLEARED)


def _write(svc: Services, w: Work, reason: str, *, state: bm.NodeState = bm.NodeState.DEPLOYING,
           instance_state: InstanceState | None = None, **values: Any) -> Work | None:
    """Write the node's step (compare and set) and what its instance shows, in one
    transaction; None when another writer moved the node first."""
    with svc.db.session() as s:
        if not compare_and_set(s, w.id, w.generation, state=state.value, **values):
            return None
        row = None if w.instance_id is None else s.get(InstanceRow, w.instance_id)
        if row is not None and row.state != InstanceState.DELETING.value:
            row.state_reason = reason
            if instance_state is not None and row.state != instance_state.value:
                row.state = instance_state.value
                row.generation += 1
                metering.instance(s, svc.settings, metering.now(svc), row.project_id, row.id,
                                  row.name, row.state, row.type_name, row.vcpus, row.ram_mib,
                                  row.disk_gib)
                kind = "started" if instance_state is InstanceState.RUNNING else "deploy_failed"
                events.add(s, [events.Event(row.project_id, "instance", row.id, row.name,
                                            kind, "system", reason)])
    return written(w, state, values)


def power_off_and_eject(w: Work, bmc: BmcFactory) -> dict[str, Any]:
    """A failed step's clean-up (best effort): the node off, its media out; the power state
    to record (none when the BMC failed)."""
    power: dict[str, Any] = {}
    if w.address is not None:
        try:
            b = bmc(w.address)
            power["power_state"] = b.power(PowerAction.OFF)
            b.eject_media()
        except BmcError as e:
            log.warning("baremetal_cleanup_failed", node=w.name, error=str(e))
    return power


def written(w: Work, state: bm.NodeState, values: dict[str, Any]) -> Work:
    """`w` as a compare-and-set of `values` left it."""
    return replace(w, state=state, generation=w.generation + 1, updated_at=datetime.now(UTC),
                   instance_id=values.get("instance_id", w.instance_id),
                   deploy_step=values.get("deploy_step", w.deploy_step),
                   deploy_report=values.get("deploy_report", w.deploy_report),
                   deploy_deadline=values.get("deploy_deadline", w.deploy_deadline))
