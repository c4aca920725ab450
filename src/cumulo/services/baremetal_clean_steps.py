"""The bare-metal conductor's cleaning: the steps that take a node in `cleaning` (its instance
deleted, or an operator's retry of a failed cleaning) back to `available`, its disk wiped.

The cleaning is a deploy's twin, with the same one-time token, routes and lease
(services.baremetal_deploy, services.baremetal_deploy_steps), recorded in the same columns:

  (none)     forget the instance (event `deleted`), issue a token (step booting), then over
             Redfish: power off, insert the deploy ISO in wipe mode, boot once from CD,
             power on → waiting
  waiting    the ramdisk zeroes the start and the end of the disk and reports; ok →
             finishing; failed, or no report by the deadline → error
  finishing  power off, eject → `available`, powered off

Anything that fails (no deploy URLs, a lost BMC password, the BMC, the ramdisk's report, its
deadline) powers the node off and ejects (best effort) and sends it to `error` with
`cleaning: <why>`: a node is never `available` with the last tenant's disk. The operator's
retry cleans it again (domain.baremetal.after_retry).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from cumulo.baremetal.redfish import BmcError, PowerAction
from cumulo.db.tables import InstanceRow
from cumulo.domain import baremetal as bm
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import events, metering
from cumulo.services.agents import forget_instance
from cumulo.services.baremetal_deploy_steps import (
    boot_media,
    cannot_boot,
    leased,
    power_off_and_eject,
    written,
)
from cumulo.services.baremetal_nodes import compare_and_set
from cumulo.services.context import Services

if TYPE_CHECKING:  # the conductor imports this module
    from cumulo.services.baremetal_conductor import BmcFactory, Work

log = structlog.get_logger("cumulo.baremetal")

ERROR_LIMIT = 500
_CLEARED: dict[str, Any] = {"deploy_step": None, "deploy_token": None,
                            "deploy_deadline": None, "deploy_report": None}


def step(svc: Services, w: Work, bmc: BmcFactory) -> Work | None:
    """One cleaning step of node `w`: its new snapshot, `w` itself when it waits, None when
    another writer moved it."""
    if leased(w):
        return w
    s = w.deploy_step
    if s == bm.DeployStep.FINISHING or (s == bm.DeployStep.WAITING
                                         and w.deploy_report == bm.REPORT_OK):
        return _finish(svc, w, bmc)
    if s == bm.DeployStep.WAITING:
        if w.deploy_report is not None:
            return _fail(svc, w, bmc, "the wipe ramdisk reported: "
                         + w.deploy_report.removeprefix(bm.REPORT_ERROR))
        if w.deploy_deadline is not None and svc.clock() >= w.deploy_deadline:
            return _fail(svc, w, bmc, "no report from the wipe ramdisk within "
                         f"{svc.settings.baremetal.deploy_timeout_s} s")
        return w
    return _boot(svc, w, bmc)


def _boot(svc: Services, w: Work, bmc: BmcFactory) -> Work | None:
    """Start (or start again) the wipe: a new token, the ISO in wipe mode, boot once, on."""
    why = cannot_boot(svc, w, "wipe")
    if why is not None or w.address is None:
        return _fail(svc, w, bmc, why or "")
    token, digest = deploy.new_token()
    deadline = w.deploy_deadline or svc.clock() + timedelta(
        seconds=svc.settings.baremetal.deploy_timeout_s)
    booting = _write(svc, w, deploy_step=bm.DeployStep.BOOTING.value, deploy_token=digest,
                     deploy_deadline=deadline, deploy_report=None)
    if booting is None:
        return None
    try:
        boot_media(bmc(w.address), deploy.iso_url(svc, token))
    except BmcError as e:
        return _fail(svc, booting, bmc, str(e))
    log.info("baremetal_wipe_booted", node=w.name)
    return _write(svc, booting, deploy_step=bm.DeployStep.WAITING.value, power_state="on")


def _finish(svc: Services, w: Work, bmc: BmcFactory) -> Work | None:
    """The disk is wiped: power off, media out; `available`."""
    after = _write(svc, w, deploy_step=bm.DeployStep.FINISHING.value)
    if after is None or after.address is None:
        return None if after is None else _fail(svc, after, bmc, "the BMC password is lost")
    try:
        b = bmc(after.address)
        b.power(PowerAction.OFF)
        b.eject_media()
    except BmcError as e:
        return _fail(svc, after, bmc, str(e))
    done = _write(svc, after, state=bm.NodeState.AVAILABLE, last_error=None, power_state="off",
                  power_action=None, **_CLEARED)
    log.info("baremetal_node_cleaned", node=w.name)
    return done


def _fail(svc: Services, w: Work, bmc: BmcFactory, why: str) -> Work | None:
    """Power the node off and take its media out (best effort), then `error` with
    `cleaning: <why>` (the instance is forgotten all the same, as in Ironic)."""
    power = power_off_and_eject(w, bmc)
    reason = f"{bm.CLEANING_FAILED}{why}"[:ERROR_LIMIT]
    log.warning("baremetal_node_error", node=w.name, error=reason)
    return _write(svc, w, state=bm.NodeState.ERROR, last_error=reason, power_action=None,
                  **power, **_CLEARED)


def _write(svc: Services, w: Work, *, state: bm.NodeState = bm.NodeState.CLEANING,
           **values: Any) -> Work | None:
    """Write the node's step (compare and set); its first write also forgets the deleted
    instance (event `deleted`). None when another writer moved the node first."""
    gone: list[tuple[str, str]] = []
    with svc.db.session() as s:
        values["instance_id"] = None
        if not compare_and_set(s, w.id, w.generation, state=state.value, **values):
            return None
        row = None if w.instance_id is None else s.get(InstanceRow, w.instance_id)
        if row is not None:
            gone = forget_instance(s, metering.now(svc), row.id)
            events.add(s, [events.Event(row.project_id, "instance", row.id, row.name,
                                        "deleted", "system")])
    for network_id, mac in gone:  # its address is free: its DNS record goes
        svc.notifier.dns_changed(network_id, removed=[mac])
    return written(w, state, values)
