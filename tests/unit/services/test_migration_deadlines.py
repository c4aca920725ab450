"""Live migration's time limits with the fake driver on two fake hosts: a copy that never
converges, and a destination whose answer never comes, are failed by the API's sweep past
[migration] max_seconds / prepare_seconds (the clock injected): the guest runs on at the
source, the destination is cleaned and its capacity released, the reason names the limit."""

from __future__ import annotations

from datetime import datetime, timedelta

from cumulo.agent.drivers.base import PowerState
from cumulo.db.tables import MigrationRow
from cumulo.domain.instance import Action
from cumulo.services import agents, events, host_drain, instances, migration_deadlines, migrations
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_migrations import (
    B,
    Side,
    _host_of,
    _running,
    _start_vm,
    _used,
    cloud,
)

__all__ = ["cloud"]  # the fixture, shared


def _started(svc: Services, mid: str) -> datetime:
    return migrations.show(svc, ADMIN, mid).created_at


def _clock(svc: Services, mid: str) -> datetime:
    """When its time limits started counting."""
    with svc.db.session() as s:
        started = migrations.load(s.get_one(MigrationRow, mid)).started
    assert started is not None
    return started


async def test_a_copy_that_never_converges_fails_after_max_seconds_and_the_source_runs_on(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    a.host.hot_memory.add(iid)  # its guest dirties memory faster than the link carries it
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    t0 = _started(svc, mig.id)
    await b.step()
    for _ in range(12):
        await a.step()
    shown = migrations.show(svc, ADMIN, mig.id)
    assert shown.state == "copying-memory" and shown.progress.passes > 3  # pass after pass
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=600)) == []
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=601)) == [mig.id]
    failed = migrations.show(svc, ADMIN, mig.id)
    assert failed.state == "failed"
    assert failed.reason.startswith(
        "it did not switch over within [migration] max_seconds = 600 s (copying-memory; last "
        f"progress: disk 1024 of 1024 MiB, memory pass {shown.progress.passes}, dirty rate "
        "90000 pages/s"), failed.reason
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=700)) == []  # once only
    assert _used(svc)[B] != before[B]  # held until the destination cleaned up
    await b.step()  # the source rolls back first
    assert iid in b.host.vms
    await a.step()
    assert a.host.vms[iid].observed.power is PowerState.RUNNING
    await b.step()
    assert iid not in b.host.vms and not b.host.fabric.listeners and b.removed == [iid]
    assert _used(svc) == before and _host_of(svc, iid) == AGENT_HOST
    assert agents.assignments(svc, a.who, a.name).migrations == []
    assert agents.assignments(svc, b.who, b.name).migrations == []
    assert migrations.show(svc, ADMIN, mig.id).reason == failed.reason
    kinds = [e.kind for e in events.list_events(svc, ADMIN, resource=iid)]
    assert "migration_failed" in kinds and "migrated" not in kinds
    instances.act(svc, ADMIN, None, "vm", Action.STOP)  # its own again


async def test_a_destination_whose_answer_never_comes_fails_after_prepare_seconds(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    t0 = _started(svc, mig.id)
    # b prepares (a paused QEMU, a listener) but its report never reaches the API.
    await b.mrec.run_pass(agents.assignments(svc, b.who, b.name).migrations)
    assert iid in b.host.vms and b.host.fabric.listeners
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=120)) == []
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=121)) == [mig.id]
    failed = migrations.show(svc, ADMIN, mig.id)
    assert (failed.state, failed.reason) == (
        "failed", "the destination did not get ready within [migration] prepare_seconds = "
                  "120 s (no answer from its agent)")
    assert agents.assignments(svc, a.who, a.name).migrations == []  # never told anything
    assert a.host.vms[iid].observed.power is PowerState.RUNNING
    await b.step()  # heard again: it removes what it prepared
    assert iid not in b.host.vms and not b.host.fabric.listeners
    assert _used(svc) == before and _host_of(svc, iid) == AGENT_HOST
    assert agents.assignments(svc, b.who, b.name).migrations == []


async def test_a_queued_migration_s_clock_starts_when_it_leaves_the_queue(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, first = cloud
    svc.settings.drain_concurrency = 1
    second = _running(svc, a, "vm-2")
    for iid in (first, second):
        await _start_vm(a, iid)
    drained = host_drain.drain(svc, ADMIN, AGENT_HOST)
    one, two = (m.id for m in drained.migrations)
    t0 = _started(svc, one)
    # Nobody answers. The queued one waits however long (no host is involved yet): only the
    # running one is overdue.
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=121)) == [one]
    assert migrations.show(svc, ADMIN, two).state == "queued"
    await b.step()  # b gives back what the first one held: the second one's turn
    assert migrations.show(svc, ADMIN, two).state == "preparing"
    t1 = _clock(svc, two)  # its own clock starts now, not at its creation
    assert t1 > _started(svc, two)
    assert migration_deadlines.sweep(svc, t1 + timedelta(seconds=120)) == []
    assert migration_deadlines.sweep(svc, t1 + timedelta(seconds=121)) == [two]
    assert migrations.show(svc, ADMIN, two).reason.startswith(
        "the destination did not get ready")


async def test_the_limits_come_from_the_configuration(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    svc.settings.migration.max_seconds = 30
    a.host.hot_memory.add(iid)
    await _start_vm(a, iid)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    t0 = _started(svc, mig.id)
    await b.step()
    await a.step()
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=30)) == []
    assert migration_deadlines.sweep(svc, t0 + timedelta(seconds=31)) == [mig.id]
    assert "max_seconds = 30 s (copying-disks;" in migrations.show(svc, ADMIN, mig.id).reason
