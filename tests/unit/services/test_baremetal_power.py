"""Stop, start and reboot of a deployed bm1 instance: the request recorded as for a VM, the
conductor's Redfish calls (a fake BMC records them), the instance following what the BMC
reports, a BMC that fails (the true state shown with the reason), a request changed
meanwhile, and the lease that keeps a second conductor off."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from sqlalchemy import select, update

from cumulo.baremetal.redfish import BmcError, PowerAction
from cumulo.db.tables import BaremetalNodeRow, EventRow, InstanceRow
from cumulo.domain.errors import Conflict
from cumulo.domain.instance import Action
from cumulo.services import baremetal_conductor as conductor
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_power as power
from cumulo.services import baremetal_power_sync as sync
from cumulo.services import instances
from cumulo.services.context import Services
from tests.baremetal_fakes import FakeBmc
from tests.baremetal_fakes import token as token_of
from tests.conftest import ADMIN
from tests.unit.services.test_baremetal_deploy import deploying  # noqa: F401


class PowerBmc(FakeBmc):
    """The deploy's fake BMC, reading its power too; an OS that ignores ACPI if told."""

    calls: ClassVar[list[str]] = []
    ignores_acpi: ClassVar[bool] = False
    during: ClassVar[Callable[[], object] | None] = None  # run at the next call, once

    def power(self, action: PowerAction, wait_s: float = 0) -> str:
        if action is PowerAction.SOFT_OFF and PowerBmc.ignores_acpi:
            self._did(f"power {action.value}")
            return FakeBmc.power_now  # still on after the grace
        return super().power(action, wait_s)

    def power_state(self) -> str:
        self._did("power read")
        return FakeBmc.power_now

    def _did(self, what: str) -> None:
        during, PowerBmc.during = PowerBmc.during, None
        if during is not None:
            during()
        if FakeBmc.fail_on is not None and what.startswith(FakeBmc.fail_on):
            raise BmcError(f"the BMC at {self.address.url} refused to {what}: HTTP 500")
        PowerBmc.calls.append(what)


@pytest.fixture
def active(deploying: Services) -> Services:  # noqa: F811
    """`metal` deployed: node `active`, powered on, the instance `running`."""
    svc = deploying
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(state="active", power_state="on"))
        s.execute(update(InstanceRow).values(state="running", state_reason=""))
    PowerBmc.calls, PowerBmc.ignores_acpi, PowerBmc.during = [], False, None
    FakeBmc.power_now, FakeBmc.fail_on = "on", None
    return svc


def _pass(svc: Services) -> dict[str, str]:
    return conductor.run_pass(svc, PowerBmc)


def _clean(svc: Services) -> None:
    """The cleaning's passes, its wipe reported ok (test_baremetal_clean.py)."""
    assert _pass(svc) == {"bm-1": "cleaning"}
    deploy.report(svc, token_of(PowerBmc), b"ok")
    assert _pass(svc) == {"bm-1": "available"}


def _shown(svc: Services) -> tuple[str, str, str]:
    with svc.db.session() as s:
        row = s.scalar(select(InstanceRow))
        assert row is not None
        return row.state, row.state_reason, row.desired_power


def _events(svc: Services) -> list[str]:
    with svc.db.session() as s:
        return list(s.scalars(select(EventRow.kind).order_by(EventRow.id)))


def _node(svc: Services) -> tuple[str | None, str | None]:
    with svc.db.session() as s:
        row = s.scalar(select(BaremetalNodeRow))
        assert row is not None
        return row.power_state, row.power_action


def test_stop_start_and_reboot_are_redfish_power_actions_the_instance_follows(
        active: Services) -> None:
    svc = active
    assert instances.act(svc, ADMIN, None, "metal", Action.STOP).state == "stopping"
    assert PowerBmc.calls == []  # recorded only: the conductor acts
    assert _pass(svc) == {"bm-1": "stopped"}
    assert PowerBmc.calls == ["power soft-off"]  # GracefulShutdown; the OS shut down
    assert _shown(svc) == ("stopped", "", "stopped") and _node(svc) == ("off", None)
    assert _pass(svc) == {}  # nothing more to do

    assert instances.act(svc, ADMIN, None, "metal", Action.START).state == "starting"
    assert _pass(svc) == {"bm-1": "running"}
    assert PowerBmc.calls[1:] == ["power on"]
    assert _shown(svc) == ("running", "", "running") and _node(svc) == ("on", None)

    assert instances.act(svc, ADMIN, None, "metal", Action.REBOOT).state == "rebooting"
    assert _pass(svc) == {"bm-1": "running"}
    assert PowerBmc.calls[2:] == ["power reboot"]  # ForceRestart
    assert _shown(svc)[0] == "running"
    assert _events(svc)[-6:] == ["stop_requested", "stopped", "start_requested", "started",
                                 "reboot_requested", "rebooted"]


def test_a_stop_the_os_ignores_is_a_forceoff_after_the_grace_and_says_so(
        active: Services) -> None:
    svc = active
    svc.settings.baremetal.stop_timeout_s = 7
    PowerBmc.ignores_acpi = True
    instances.act(svc, ADMIN, None, "metal", Action.STOP)
    assert _pass(svc) == {"bm-1": "stopped"}
    assert PowerBmc.calls == ["power soft-off", "power off"]
    assert _shown(svc) == ("stopped", "the OS did not shut down within 7 s: powered off "
                           "(ForceOff)", "stopped")


def test_a_bmc_that_fails_leaves_the_true_state_with_the_reason(active: Services) -> None:
    svc = active
    FakeBmc.fail_on = "power soft-off"
    instances.act(svc, ADMIN, None, "metal", Action.STOP)
    assert _pass(svc) == {"bm-1": "running"}  # the machine is still on: it runs
    state, reason, desired = _shown(svc)
    assert (state, desired) == ("running", "running")  # nothing retried behind the user
    assert reason == ("stop failed: the BMC at http://127.0.0.1:9 refused to power soft-off: "
                      "HTTP 500")
    assert _events(svc)[-1] == "stop_failed" and _node(svc) == ("on", None)
    assert _pass(svc) == {}

    FakeBmc.fail_on = "power"  # the power cannot even be read: nobody knows
    instances.act(svc, ADMIN, None, "metal", Action.REBOOT)
    assert _pass(svc) == {"bm-1": "error"}
    assert _shown(svc)[0] == "error" and _shown(svc)[1].startswith("reboot failed: ")
    FakeBmc.fail_on = None  # a start from error brings it back
    instances.act(svc, ADMIN, None, "metal", Action.START)
    assert _pass(svc) == {"bm-1": "running"}


def test_a_request_changed_meanwhile_wins_and_a_claimed_node_is_left_to_its_conductor(
        active: Services) -> None:
    svc = active
    instances.act(svc, ADMIN, None, "metal", Action.STOP)
    [work] = power.pending(svc, lambda r: conductor._work(svc, r))
    instances.act(svc, ADMIN, None, "metal", Action.START)  # while the stop is under way
    assert power.apply(svc, work, PowerBmc) == "stale"  # the stop's result is not written
    assert _shown(svc)[0] == "starting"
    # The claim is a lease: another conductor leaves the node alone until it runs out.
    assert _node(svc) == ("off", None)  # what the BMC did is recorded on the node
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(power_action="stop"))
    assert _pass(svc) == {}
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(
            updated_at=datetime.now(UTC) - timedelta(seconds=power.lease_s(svc.settings) + 1)))
    assert _pass(svc) == {"bm-1": "running"}  # the start, applied by the next conductor
    assert _shown(svc) == ("running", "", "running") and _node(svc) == ("on", None)


def test_deleting_a_running_server_cleans_its_node(active: Services) -> None:
    svc = active
    instances.act(svc, ADMIN, None, "metal", Action.STOP)
    instances.act(svc, ADMIN, None, "metal", Action.DELETE)  # before the stop is applied
    _clean(svc)
    # the cleaning's: off, the wipe ramdisk on, off once wiped; no stop of its own
    assert [c for c in PowerBmc.calls if c.startswith("power")] == [
        "power off", "power on", "power off"]


def test_a_delete_during_a_stop_is_cleaned_once_the_stop_is_done(active: Services) -> None:
    svc = active
    instances.act(svc, ADMIN, None, "metal", Action.STOP)
    [work] = power.pending(svc, lambda r: conductor._work(svc, r))
    waited: list[list[conductor.Work]] = []

    def delete() -> None:  # while the conductor's Redfish call is under way
        instances.act(svc, ADMIN, None, "metal", Action.DELETE)
        waited.append(conductor.pending(svc))  # the cleaning waits for the power action

    PowerBmc.during = delete
    assert power.apply(svc, work, PowerBmc) == "stale"
    assert waited == [[]] and _node(svc)[1] is None  # the claim released
    _clean(svc)
    assert PowerBmc.calls[:2] == ["power soft-off", "power off"]
    assert instances.list_all(svc, ADMIN, None) == []


def _sync(svc: Services) -> dict[str, str]:
    return conductor.run_pass(svc, PowerBmc, sync_power=True)


def _last_event(svc: Services) -> tuple[str, str, str]:
    with svc.db.session() as s:
        row = s.scalars(select(EventRow).order_by(EventRow.id.desc())).first()
        assert row is not None
        return row.kind, row.actor, row.detail


def test_a_power_change_without_a_request_is_seen_by_the_power_sync(active: Services) -> None:
    svc = active
    assert _sync(svc) == {"bm-1": "running"} and PowerBmc.calls == ["power read"]
    assert _pass(svc) == {} and PowerBmc.calls == ["power read"]  # only every few passes
    FakeBmc.power_now = "off"  # the OS powered itself off (`poweroff`), nobody asked
    assert _pass(svc) == {} and _shown(svc)[0] == "running"
    assert _sync(svc) == {"bm-1": "stopped"}
    # as a VM whose guest powered off: stopped, and meant to stay so (desired power)
    assert _shown(svc) == ("stopped", sync.OFF_REASON, "stopped") and _node(svc) == ("off", None)
    assert _last_event(svc) == ("stopped", "guest", sync.OFF_REASON)
    before = len(_events(svc))
    assert _sync(svc) == {"bm-1": "stopped"} and len(_events(svc)) == before  # no change
    FakeBmc.power_now = "on"  # powered on at the BMC, outside cumulo
    assert _sync(svc) == {"bm-1": "running"}
    assert _shown(svc) == ("running", "", "running") and _node(svc) == ("on", None)
    assert _last_event(svc) == ("started", "agent", sync.ON_DETAIL)

    # A BMC that does not answer changes nothing (the next sync reads it again).
    FakeBmc.power_now, FakeBmc.fail_on = "off", "power read"
    assert _sync(svc) == {"bm-1": "running"} and _shown(svc)[0] == "running"
    # A request made during the read wins: the sync's result is dropped, the request applied.
    FakeBmc.fail_on = None
    PowerBmc.during = lambda: instances.act(svc, ADMIN, None, "metal", Action.STOP)
    assert _sync(svc) == {"bm-1": "stale"}
    assert _shown(svc)[0] == "stopping"
    assert _pass(svc) == {"bm-1": "stopped"} and PowerBmc.calls[-1] == "power soft-off"
    assert _last_event(svc)[:2] == ("stopped", "user")


def test_a_servers_console_is_refused_saying_why(active: Services) -> None:
    with pytest.raises(Conflict) as e:
        instances.console_target(active, ADMIN, None, "metal")
    assert e.value.code == "baremetal_no_console"
    assert str(e.value).startswith("instance 'metal' is a bare-metal server: its console is its "
                                   "BMC's serial console")
