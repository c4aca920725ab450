"""A migration whose destination host goes down (its agent silent), with the fake driver on
two fake hosts: the API's sweep fails it with the reason and releases the capacity it held
there at once, whatever its stage (preparing, copying, a cold copy, or already cancelled and
waiting for that host's clean-up); the source runs on (or keeps its disk); when the host is
heard from again it is told to clean up. A live migration past its switch-over only goes
forward: it waits."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

from cumulo.agent.drivers.base import PowerState
from cumulo.db.tables import HostRow, MigrationRow
from cumulo.services import agents, migration_deadlines, migrations
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_cold_moves import DISK, DiskSide, _stopped, hosts_ab
from tests.unit.services.test_migrations import B, Side, _host_of, _start_vm, _used, cloud, switched

__all__ = ["cloud", "hosts_ab"]  # the fixtures, shared


def _state(svc: Services, host: str, state: str) -> None:
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == host)
                  .values(state=state, last_seen=datetime.now(UTC)))


def _held(svc: Services) -> list[str]:
    with svc.db.session() as s:
        return list(s.scalars(select(MigrationRow.id).where(MigrationRow.active)))


def _lost(svc: Services, mig_id: str, state: str = "failed") -> None:
    shown = migrations.show(svc, ADMIN, mig_id)
    assert shown.state == state, shown
    if state == "failed":
        assert shown.reason.startswith(f"its destination host {B} is down (no word from its "
                                       "agent): what it held there is released")
    assert _held(svc) == []


async def _back(svc: Services, b: Side) -> None:
    """b's agent is heard from again: it is told to clean up, and does."""
    _state(svc, B, "up")
    await b.step()
    assert agents.assignments(svc, b.who, b.name).migrations == []
    assert not b.host.migrations and not b.host.fabric.listeners


async def test_a_destination_down_during_the_copy_fails_it_and_releases_it(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    assert migrations.show(svc, ADMIN, mig.id).state == "copying-disks"
    _state(svc, B, "down")
    assert migration_deadlines.sweep(svc) == [mig.id]
    _lost(svc, mig.id)
    assert _used(svc) == before  # nothing held on b from now on
    assert migration_deadlines.sweep(svc) == []  # said once
    await a.step()  # the source rolls back: the guest runs on there
    assert a.host.vms[iid].observed.power is PowerState.RUNNING
    assert iid in b.host.vms  # b's leftovers wait for its agent
    await _back(svc, b)
    assert iid not in b.host.vms and b.removed == [iid]
    assert _host_of(svc, iid) == AGENT_HOST and _used(svc) == before


async def test_a_destination_down_before_it_answered_fails_it_and_releases_it(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    _state(svc, B, "down")
    assert migration_deadlines.sweep(svc) == [mig.id]
    _lost(svc, mig.id)
    assert agents.assignments(svc, a.who, a.name).migrations == []  # nothing to undo there
    await _back(svc, b)
    assert _used(svc) == before and a.host.vms[iid].observed.power is PowerState.RUNNING


async def test_a_cancelled_migration_whose_destination_dies_before_its_clean_up_is_released(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    migrations.cancel(svc, ADMIN, mig.id)
    await a.step()  # the source rolled back; b's clean-up is next, but b is gone
    assert _held(svc) == [mig.id]
    _state(svc, B, "down")
    assert migration_deadlines.sweep(svc) == [mig.id]
    _lost(svc, mig.id, "cancelled")
    assert migrations.show(svc, ADMIN, mig.id).reason == "cancelled by an administrator"
    await _back(svc, b)
    assert iid not in b.host.vms and _used(svc) == before


async def test_a_cold_move_whose_destination_dies_keeps_the_source_disk(
        svc: Services, hosts_ab: tuple[DiskSide, DiskSide]) -> None:
    a, b = hosts_ab
    iid = _stopped(svc, a, "vm")
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    _state(svc, B, "down")
    assert migration_deadlines.sweep(svc) == [mig.id]
    _lost(svc, mig.id)
    await a.step()
    assert a.disk(iid).read_bytes() == DISK and _used(svc) == before
    await _back(svc, b)
    assert not b.disk(iid).exists() and _host_of(svc, iid) == AGENT_HOST


async def test_a_live_migration_past_its_switch_over_waits_for_its_destination(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    mig = await switched(svc, a, b, iid)
    _state(svc, B, "down")
    assert migration_deadlines.sweep(svc) == []  # only forward: it cannot go back now
    assert _held(svc) == [mig.id]
    _state(svc, B, "up")
    await b.step()
    assert migrations.show(svc, ADMIN, mig.id).state == "completed" and _host_of(svc, iid) == B
