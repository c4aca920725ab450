"""Cold moves with the fake driver on two fake hosts: a stopped instance's disk is copied to
the destination (real bytes), checked (the two hosts' digests), and only then does the
instance change host; nothing is started anywhere. A copy that differs, a cancel and a
destination that goes away each leave the source's disk as it was, remove the destination's
copy and hold nothing; `host drain` moves stopped instances cold."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from cumulo.agent.drivers.base import VMSpec
from cumulo.agent.drivers.fake import FakeDriver, FakeFabric
from cumulo.agent.migration_reconciler import MigrationReconciler
from cumulo.db.tables import MigrationRow
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import Action
from cumulo.protocol import Assignment, Observation
from cumulo.services import agents, events, host_drain, instances, migrations
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_migrations import (
    B,
    Side,
    _host_of,
    _running,
    _start_vm,
    _used,
    register_two,
)

DISK = b"the stopped guest's disk " * 4000


class DiskSide(Side):
    """A fake host whose driver reads and writes the instances' disk files."""

    def restart(self) -> None:
        self.driver = FakeDriver(self.host, check_paths=True)
        self.mrec = MigrationReconciler(self.driver, self.root / self.name / "migrations",
                                        self._spec, self.removed.append, self.underlay)

    async def _spec(self, a: Assignment) -> VMSpec:
        spec = await super()._spec(a)
        spec.boot_disk.parent.mkdir(parents=True, exist_ok=True)  # as the agent's own does
        return spec

    def disk(self, iid: str) -> Path:
        return self.root / self.name / iid / "disk"


@pytest.fixture
def hosts_ab(svc: Services, tmp_path: Path) -> tuple[DiskSide, DiskSide]:
    register_two(svc)
    fabric = FakeFabric()
    return (DiskSide(svc, AGENT_HOST, fabric, tmp_path, "10.250.0.1"),
            DiskSide(svc, B, fabric, tmp_path, "10.250.0.2"))


def _stopped(svc: Services, a: DiskSide, name: str) -> str:
    """An instance on a, stopped (reported so), with its disk's bytes on a."""
    iid = _running(svc, a, name)
    instances.act(svc, ADMIN, None, name, Action.STOP)
    agents.report(svc, a.who, a.name, [Observation(id=iid, state="stopped", generation=2)])
    a.disk(iid).parent.mkdir(parents=True, exist_ok=True)
    a.disk(iid).write_bytes(DISK)
    return iid


async def _until(svc: Services, mig_id: str, *sides: DiskSide, states: tuple[str, ...],
                 rounds: int = 30) -> migrations.MigrationView:
    for _ in range(rounds):
        for side in sides:
            await side.step()
        shown = migrations.show(svc, ADMIN, mig_id)
        if shown.state in states:
            return shown
    raise AssertionError(f"{mig_id} is {shown.state}, not {states}: {shown.reason}")


def _held(svc: Services) -> list[str]:
    with svc.db.session() as s:
        return list(s.scalars(select(MigrationRow.id).where(MigrationRow.active)))


async def test_a_stopped_instance_moves_cold_and_changes_host_only_once_checked(
        svc: Services, hosts_ab: tuple[DiskSide, DiskSide]) -> None:
    a, b = hosts_ab
    iid = _stopped(svc, a, "vm")
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    assert (mig.state, mig.cold) == ("preparing", True)
    with pytest.raises(CumuloError) as e:  # its owner cannot start it meanwhile
        instances.act(svc, ADMIN, None, "vm", Action.START)
    assert e.value.code == "migration_in_progress"

    await b.step()  # an empty disk, exported; no VM
    assert migrations.show(svc, ADMIN, mig.id).state == "copying-disks"
    assert b.disk(iid).read_bytes() == b"" and not b.host.vms
    copied = await _until(svc, mig.id, a, states=("switching-over",))
    # The copy is over and the source said its digest; the instance is still a's until the
    # destination has checked what arrived.
    assert _host_of(svc, iid) == AGENT_HOST
    assert b.disk(iid).read_bytes() == DISK
    assert copied.progress.disk_bytes_copied == copied.progress.disk_bytes_total > 0
    await b.step()  # checks the digest, and takes the disk
    assert _host_of(svc, iid) == B
    await a.step()  # the source removes its copy
    done = migrations.show(svc, ADMIN, mig.id)
    assert (done.state, done.reason, done.downtime_ms) == ("completed", "", None)
    assert a.removed == [iid] and not b.removed and b.disk(iid).read_bytes() == DISK
    assert not a.host.vms and not b.host.vms  # nothing was started, anywhere
    assert not a.host.migrations and not b.host.migrations and not b.host.fabric.listeners
    vm = instances.get(svc, ADMIN, None, "vm")
    assert (vm.id, vm.state) == (iid, "stopped")
    after = _used(svc)
    assert after[B][0] == before[B][0] + 1 and after[AGENT_HOST][0] == before[AGENT_HOST][0] - 1
    assert _held(svc) == []
    kinds = [(k.kind, k.detail) for k in events.list_events(svc, ADMIN, resource=iid)]
    with svc.db.session() as s:
        digest = s.scalar(select(MigrationRow.checksum).where(MigrationRow.id == mig.id))
    assert digest is not None and digest.startswith("sha256:")
    assert ("migrated", f"{mig.id}: moved stopped, its disk copied and checked ({digest})"
            ) in kinds


async def test_a_copy_that_differs_is_refused_and_the_instance_stays(
        svc: Services, hosts_ab: tuple[DiskSide, DiskSide]) -> None:
    a, b = hosts_ab
    iid = _stopped(svc, a, "vm")
    before = _used(svc)
    a.host.corrupt_copies.add(iid)  # one byte changes on the way
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await _until(svc, mig.id, b, a, states=("switching-over",))
    failed = await _until(svc, mig.id, b, a, states=("failed",))
    assert "the copied disk differs from the source's" in failed.reason
    assert _host_of(svc, iid) == AGENT_HOST
    for _ in range(3):  # the source confirms (nothing to undo), then b removes its copy
        await a.step()
        await b.step()
    assert a.disk(iid).read_bytes() == DISK and not b.disk(iid).exists()
    assert b.removed == [iid] and not a.removed
    assert not b.host.migrations and not b.host.fabric.listeners
    assert _used(svc) == before and _held(svc) == []
    assert instances.get(svc, ADMIN, None, "vm").state == "stopped"
    instances.act(svc, ADMIN, None, "vm", Action.START)  # its owner may start it again


async def test_a_cancelled_or_abandoned_cold_move_leaves_the_source_and_holds_nothing(
        svc: Services, hosts_ab: tuple[DiskSide, DiskSide]) -> None:
    a, b = hosts_ab
    iid = _stopped(svc, a, "vm")
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()  # the copy is under way
    assert migrations.cancel(svc, ADMIN, mig.id).state == "cancelled"
    for _ in range(2):
        await a.step()
        await b.step()
    assert a.disk(iid).read_bytes() == DISK and not b.disk(iid).exists()
    assert not b.host.fabric.listeners and _used(svc) == before and _held(svc) == []
    assert agents.assignments(svc, b.who, b.name).migrations == []

    # Again, and the destination's export goes away during the copy (its host lost it).
    again = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    b.host.fabric.listeners.clear()
    failed = await _until(svc, again.id, a, b, states=("failed",))
    assert "destination closed the connection" in failed.reason
    for _ in range(2):
        await a.step()
        await b.step()
    assert a.disk(iid).read_bytes() == DISK and not b.disk(iid).exists()
    assert _used(svc) == before and _held(svc) == [] and _host_of(svc, iid) == AGENT_HOST


async def test_drain_moves_stopped_instances_cold_and_running_ones_live(
        svc: Services, hosts_ab: tuple[DiskSide, DiskSide]) -> None:
    a, b = hosts_ab
    running = _running(svc, a, "vm")
    (a.root / "unused").write_bytes(b"the running guest's disk")  # _start_vm's boot disk
    await _start_vm(a, running)
    stopped = _stopped(svc, a, "vm-2")
    drained = host_drain.drain(svc, ADMIN, AGENT_HOST)
    assert drained.unmoved == []
    assert sorted((m.instance, m.cold) for m in drained.migrations) == [
        ("vm", False), ("vm-2", True)]
    for _ in range(40):
        await b.step()
        await a.step()
        states = [m.state for m in migrations.list_all(svc, ADMIN)]
        if states == ["completed", "completed"]:
            break
    assert states == ["completed", "completed"]
    assert _host_of(svc, running) == _host_of(svc, stopped) == B
    assert b.disk(stopped).read_bytes() == DISK
    assert instances.get(svc, ADMIN, None, "vm-2").state == "stopped"
    assert set(b.host.vms) == {running}  # the stopped one was not started
