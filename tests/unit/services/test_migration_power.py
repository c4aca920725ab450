"""A live migration and the guest's own power (issue 25's storm, seed 626427342), with the
fake driver on two fake hosts: a guest that powers itself off during the copy arrives
powered off, and the migration still ends (the destination does not resume it, and shows it
stopped as any host would); a guest that was asked to power off (a stop, then a start before
it was off) does not move while it may still obey (it would arrive off where nobody knows it
was asked, and the user's start would turn into a stop)."""

from __future__ import annotations

from pathlib import Path

from cumulo.agent.drivers.base import PowerState
from cumulo.agent.main import _pass as agent_pass
from cumulo.agent.reconciler import Reconciler
from cumulo.services import agents, instances, migrations
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_migrations import (
    B,
    Side,
    _copying,
    _host_of,
    _start_vm,
    _used,
    cloud,
    switched,
)

__all__ = ["cloud"]  # the fixture, shared


async def _pass(side: Side, root: Path) -> None:
    """One agent pass of `side` (instances and migrations), its report sent."""
    report = await agent_pass(Reconciler(side.driver, root / f"{side.name}-vms"),
                              agents.assignments(side.svc, side.who, side.name), None,
                              side.mrec)
    if report is not None:
        agents.report(side.svc, side.who, side.name, report.observations,
                      migrations=report.migrations)
        side.mrec.acknowledge(report.migrations)


async def test_a_guest_that_powers_off_during_the_copy_arrives_off_and_the_move_ends(
        svc: Services, cloud: tuple[Side, Side, str], tmp_path: Path) -> None:
    a, b, iid = cloud
    mig, before = await _copying(svc, a, b, iid)
    a.driver.simulate_guest_poweroff(iid)  # the guest chose to (`poweroff` in it)
    for _ in range(20):
        await a.step()
        if migrations.show(svc, ADMIN, mig.id).downtime_ms is not None:  # switched
            break
    await b.step()  # finish: it arrived powered off, and is left so (QEMU refuses `cont`)
    shown = migrations.show(svc, ADMIN, mig.id)
    assert (shown.state, shown.reason) == ("completed", "")
    assert _host_of(svc, iid) == B
    assert b.host.vms[iid].observed.power is PowerState.SHUTDOWN
    await a.step()  # the source removes its copy
    assert iid not in a.host.vms and a.removed == [iid]
    await _pass(b, tmp_path)  # b's agent sees it as on any host: the guest powered off
    vm = instances.get(svc, ADMIN, None, "vm")
    assert (vm.state, vm.desired_state, vm.state_reason) == (
        "stopped", "stopped", "the guest powered itself off")
    assert b.host.vms[iid].observed.power is PowerState.STOPPED  # no process left
    assert agents.assignments(svc, a.who, a.name).migrations == []
    assert agents.assignments(svc, b.who, b.name).migrations == []
    assert _used(svc)[AGENT_HOST][0] == before[AGENT_HOST][0] - 1


async def test_a_guest_asked_to_power_off_does_not_move_and_the_last_start_wins(
        svc: Services, cloud: tuple[Side, Side, str], tmp_path: Path) -> None:
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    # A stop (a's agent asked the guest to power off), then a start before the guest was
    # off: the instance shows running, settled, and the API lets it move.
    await a.driver.request_shutdown(iid)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    shown = migrations.show(svc, ADMIN, mig.id)
    assert shown.state == "failed" and "asked to power off" in shown.reason, shown
    await b.step()  # the destination cleans up
    assert iid not in b.host.vms and _used(svc) == before and _host_of(svc, iid) == AGENT_HOST
    # a's agent restarted meanwhile (it forgot what it asked): the guest obeys the old stop,
    # and is started again, as the user asked last.
    await _pass(a, tmp_path)
    vm = instances.get(svc, ADMIN, None, "vm")
    assert (vm.state, vm.desired_state) == ("starting", "running")  # started at the next pass
    assert a.host.vms[iid].observed.power is PowerState.STOPPED


async def test_a_destination_qemu_that_dies_after_the_switch_over_ends_the_move_as_a_crash(
        svc: Services, cloud: tuple[Side, Side, str], tmp_path: Path) -> None:
    """Its finish used to fail for good ("it has not arrived"): the migration stayed
    switching-over. The disk is all on the destination; the guest's memory died there."""
    a, b, iid = cloud
    mig = await switched(svc, a, b, iid)
    b.driver.simulate_crash(iid)  # killed before its agent let the guest run
    await b.step()
    assert migrations.show(svc, ADMIN, mig.id).state == "completed"
    assert _host_of(svc, iid) == B
    await a.step()
    assert iid not in a.host.vms and a.removed == [iid]
    await _pass(b, tmp_path)
    vm = instances.get(svc, ADMIN, None, "vm")
    assert (vm.state, vm.desired_state) == ("error", "running")
    assert "exited unexpectedly" in vm.state_reason, vm
    assert iid in b.host.vms and not b.removed  # its disk is kept: a start boots it there


async def test_an_arrival_that_cannot_be_resumed_ends_as_a_crash_after_a_while(
        svc: Services, cloud: tuple[Side, Side, str], tmp_path: Path) -> None:
    """A switched migration can only go forward: a destination whose QEMU keeps refusing to
    resume the guest tries again at each pass (the reason shown), then gives up: the move
    ends, and the instance shows `error` with why, on the host that has its disk."""
    a, b, iid = cloud
    mig = await switched(svc, a, b, iid)
    b.host.unresumable.add(iid)
    b.driver.finish_give_up_s = 3600.0
    await b.step()
    await b.step()
    shown = migrations.show(svc, ADMIN, mig.id)
    assert shown.state == "switching-over" and "cont on" in shown.reason, shown
    assert b.host.vms[iid].observed.power is PowerState.PAUSED  # waiting, not running
    b.driver.finish_give_up_s = 0.0  # its time is up
    await b.step()
    assert migrations.show(svc, ADMIN, mig.id).state == "completed"
    assert _host_of(svc, iid) == B
    await a.step()
    assert iid not in a.host.vms
    await _pass(b, tmp_path)
    vm = instances.get(svc, ADMIN, None, "vm")
    assert (vm.state, vm.desired_state) == ("error", "running")
    assert vm.state_reason.startswith("it arrived by live migration but could not be resumed "
                                      "for 0 s (QMP cont on"), vm.state_reason
    assert b.host.vms[iid].observed.power is PowerState.CRASHED  # no process left
