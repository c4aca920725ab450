"""Live migration's control plane with the fake driver on two fake hosts: the API's record
and its state machine driven by the hosts' real migration reconcilers through the agent
protocol (assignments and reports): completion, cancel, a destination that dies, an agent
restart, capacity held on both hosts and released after, and refused requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from cumulo.agent.drivers.base import IncomingMigration, MigrationState, PowerState, VMSpec
from cumulo.agent.drivers.fake import FakeDriver, FakeFabric, FakeHost
from cumulo.agent.main import _pass as agent_pass
from cumulo.agent.migration_reconciler import MigrationReconciler
from cumulo.agent.reconciler import Reconciler
from cumulo.db.tables import HostRow, InstanceRow, MigrationRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import Action
from cumulo.protocol import Assignment, Observation
from cumulo.services import agents, events, hosts, instances, migrations
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, AGENT_HOST, stored_state

B = "host-b"


class Side:
    """One fake host: its driver and its real migration reconciler, talking to the API's
    services as its agent would (assignments, then a report)."""

    def __init__(self, svc: Services, name: str, fabric: FakeFabric, root: Path,
                 underlay: str) -> None:
        self.svc, self.name, self.root, self.underlay = svc, name, root, underlay
        self.who = Principal(role=Role.AGENT, host_name=name)
        self.host = FakeHost(fabric=fabric)
        self.removed: list[str] = []
        self.restart()

    def restart(self) -> None:
        """A new agent (and driver) on the same host: what it knows is on the host."""
        self.restart_with(FakeDriver(self.host, check_paths=False))

    def restart_with(self, driver: FakeDriver) -> None:
        self.driver = driver
        self.mrec = MigrationReconciler(self.driver, self.root / self.name / "migrations",
                                        self._spec, self.removed.append, self.underlay)

    async def _spec(self, a: Assignment) -> VMSpec:
        return VMSpec(vm_id=a.id, hostname=a.hostname, arch=Arch.parse(a.arch), vcpus=a.vcpus,
                      ram_mib=a.ram_mib, boot_disk=self.root / self.name / a.id / "disk")

    async def step(self) -> None:
        batch = agents.assignments(self.svc, self.who, self.name)
        obs = await self.mrec.run_pass(batch.migrations)
        agents.report(self.svc, self.who, self.name, [], migrations=obs)
        self.mrec.acknowledge(obs)


@pytest.fixture
def cloud(svc: Services, tmp_path: Path) -> tuple[Side, Side, str]:
    """host-a and host-b in local-1a with underlay addresses; an instance running on a."""
    register_two(svc)
    fabric = FakeFabric()
    a = Side(svc, AGENT_HOST, fabric, tmp_path, "10.250.0.1")
    b = Side(svc, B, fabric, tmp_path, "10.250.0.2")
    iid = _running(svc, a, "vm")
    return a, b, iid


def register_two(svc: Services) -> None:
    """host-a and host-b in local-1a, with underlay addresses 10.250.0.1 and .2."""
    for name, ip in ((AGENT_HOST, "10.250.0.1"), (B, "10.250.0.2")):
        hosts.register(svc, ADMIN, name=name, zone="local-1a", architectures=["x86_64"],
                       vcpus=4, ram_mib=4096, driver="fake", accel="fake", agent_url="",
                       underlay_ip=ip)


def _running(svc: Services, a: Side, name: str) -> str:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano")
    iid = instances.create(svc, ADMIN, None, req).id
    with svc.db.session() as s:  # spread placement: make sure it is on a
        s.execute(update(InstanceRow).where(InstanceRow.id == iid)
                  .values(host_id=agents.host_id(svc, a.who, a.name)))
    agents.report(svc, a.who, a.name, [Observation(id=iid, state="running", generation=1)])
    return iid


async def _start_vm(side: Side, iid: str) -> None:
    await side.driver.start(VMSpec(vm_id=iid, hostname="vm", arch=Arch.X86_64, vcpus=1,
                                   ram_mib=128, boot_disk=side.root / "unused"))


def _host_of(svc: Services, iid: str) -> str:
    with svc.db.session() as s:
        return str(s.scalar(select(HostRow.name).join(
            InstanceRow, InstanceRow.host_id == HostRow.id).where(InstanceRow.id == iid)))


def _used(svc: Services) -> dict[str, tuple[int, int]]:
    with svc.db.session() as s:
        return {c.name: (c.vcpus_used, c.ram_mib_used)
                for c in hosts.capacities(s, svc.settings, "local-1a")}


async def test_a_migration_completes_and_the_host_changes_only_after_the_arrival(
        svc: Services, cloud: tuple[Side, Side, str], tmp_path: Path) -> None:
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    assert (mig.id[:4], mig.instance, mig.source, mig.destination, mig.state) == (
        "mig-", "vm", AGENT_HOST, B, "preparing")
    # Capacity is held on both hosts while it runs.
    during = _used(svc)
    assert during[B] == (before[B][0] + 1, before[B][1] + 128)
    assert during[AGENT_HOST] == before[AGENT_HOST]

    await b.step()  # the destination prepares and says where to send the VM
    assert migrations.show(svc, ADMIN, mig.id).state == "copying-disks"
    assert b.host.vms[iid].observed.power is PowerState.PAUSED  # never runs before finish
    seen = set()
    for _ in range(20):
        await a.step()
        shown = migrations.show(svc, ADMIN, mig.id)
        seen.add(shown.state)
        if shown.state == "switching-over" and shown.downtime_ms is not None:
            break
        assert _host_of(svc, iid) == AGENT_HOST
    assert {"copying-disks", "copying-memory", "switching-over"} <= seen
    # The source completed: the instance is still a's until b says the guest runs there.
    assert _host_of(svc, iid) == AGENT_HOST
    assert shown.progress.disk_bytes_total == 1 << 30 and shown.progress.passes >= 1
    await a.step()  # nothing for the source to do until the arrival
    assert a.host.vms[iid].observed.power is PowerState.PAUSED  # QEMU's postmigrate
    # The source's agent pass leaves its paused copy alone, and says nothing of it: the
    # user's view stays running.
    report = await agent_pass(Reconciler(a.driver, tmp_path / "a-vms"),
                              agents.assignments(svc, a.who, a.name), None, a.mrec)
    assert report is None or all(o.id != iid for o in report.observations)
    assert a.host.vms[iid].observed.power is PowerState.PAUSED
    await b.step()  # finish: the guest runs on b
    # b's next pass runs it as assigned (its NICs on the bridges), then announces it.
    await agent_pass(Reconciler(b.driver, tmp_path / "b-vms"),
                     agents.assignments(svc, b.who, b.name), None, b.mrec)
    assert b.host.vms[iid].events[-1] == "announce" and not b.mrec.to_announce
    done = migrations.show(svc, ADMIN, mig.id)
    assert (done.state, done.downtime_ms, done.reason) == ("completed", 20, "")
    assert _host_of(svc, iid) == B
    assert b.host.vms[iid].observed.power is PowerState.RUNNING
    await a.step()  # the source removes its copy
    assert iid not in a.host.vms and a.removed == [iid]
    after = _used(svc)
    assert after[B] == during[B] and after[AGENT_HOST][0] == before[AGENT_HOST][0] - 1
    assert agents.assignments(svc, a.who, a.name).migrations == []
    assert agents.assignments(svc, b.who, b.name).migrations == []
    # The user's view: still running, same id; its log tells of the move without hosts.
    vm = instances.get(svc, ADMIN, None, "vm")
    assert (vm.id, vm.state) == (iid, "running")
    kinds = [(e.kind, e.detail) for e in events.list_events(svc, ADMIN, resource=iid)]
    assert ("migrated", f"{mig.id}: downtime 20 ms, total 0.5 s") in kinds
    assert [m.id for m in migrations.list_all(svc, ADMIN)] == [mig.id]


async def switched(svc: Services, a: Side, b: Side, iid: str) -> migrations.MigrationView:
    """The VM running on a, its migration to b switched over (the source completed)."""
    await _start_vm(a, iid)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    for _ in range(20):
        await a.step()
        if migrations.show(svc, ADMIN, mig.id).downtime_ms is not None:
            break
    return mig


async def _copying(svc: Services, a: Side, b: Side, iid: str
                   ) -> tuple[migrations.MigrationView, dict[str, tuple[int, int]]]:
    """The VM running on a, a migration to b under way (the disk copy started); and what
    the hosts held before it."""
    await _start_vm(a, iid)
    before = _used(svc)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    return mig, before


async def test_a_cancel_rolls_back_the_source_first_then_cleans_the_destination(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    mig, before = await _copying(svc, a, b, iid)
    with pytest.raises(CumuloError) as e:  # the instance's own actions wait meanwhile
        instances.act(svc, ADMIN, None, "vm", Action.STOP)
    assert e.value.code == "migration_in_progress"
    assert migrations.cancel(svc, ADMIN, mig.id).state == "cancelled"
    await b.step()  # the destination waits for the source's roll-back
    assert iid in b.host.vms
    await a.step()
    assert a.host.migrations[iid].state is MigrationState.CANCELLED
    assert a.host.vms[iid].observed.power is PowerState.RUNNING
    await b.step()
    assert iid not in b.host.vms and not b.host.fabric.listeners and b.removed == [iid]
    shown = migrations.show(svc, ADMIN, mig.id)
    assert (shown.state, shown.reason) == ("cancelled", "cancelled by an administrator")
    assert _host_of(svc, iid) == AGENT_HOST and _used(svc) == before
    assert migrations.cancel(svc, ADMIN, mig.id).state == "cancelled"  # idempotent
    assert agents.assignments(svc, b.who, b.name).migrations == []


async def test_a_dead_destination_fails_it_with_its_reason_and_the_source_runs_on(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    mig, before = await _copying(svc, a, b, iid)
    b.driver.simulate_crash(iid, "killed")  # the destination QEMU dies during the copy
    await a.step()
    failed = migrations.show(svc, ADMIN, mig.id)
    assert failed.state == "failed" and "destination closed the connection" in failed.reason
    assert a.host.vms[iid].observed.power is PowerState.RUNNING
    assert _used(svc)[B] != before[B]  # held until the destination confirmed its clean-up
    await b.step()
    assert iid not in b.host.vms and _used(svc) == before
    assert _host_of(svc, iid) == AGENT_HOST
    with pytest.raises(CumuloError) as e:
        migrations.cancel(svc, ADMIN, mig.id)
    assert e.value.code == "invalid_state"
    kinds = [e.kind for e in events.list_events(svc, ADMIN, resource=iid)]
    assert "migration_failed" in kinds and "migrated" not in kinds


async def test_a_destination_agent_that_restarts_mid_migration_carries_on(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    mig, _ = await _copying(svc, a, b, iid)
    b.restart()
    for _ in range(20):
        await a.step()
        await b.step()
        if migrations.show(svc, ADMIN, mig.id).state == "completed":
            break
    await a.step()
    assert migrations.show(svc, ADMIN, mig.id).state == "completed"
    assert _host_of(svc, iid) == B and iid not in a.host.vms
    assert b.host.vms[iid].observed.power is PowerState.RUNNING


async def test_a_source_agent_that_restarts_mid_copy_rolls_it_back(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud
    mig, before = await _copying(svc, a, b, iid)
    a.restart()  # nobody follows the copy's events now
    await a.step()
    shown = migrations.show(svc, ADMIN, mig.id)
    assert shown.state == "failed" and "agent restarted during the copy" in shown.reason
    assert a.host.vms[iid].observed.power is PowerState.RUNNING
    await a.step()
    await b.step()
    assert iid not in b.host.vms and _used(svc) == before
    assert _host_of(svc, iid) == AGENT_HOST


async def test_a_source_failure_that_leaves_no_destination_fails_it(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, iid = cloud  # the VM does not run on a: migrate_out fails
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    shown = migrations.show(svc, ADMIN, mig.id)
    assert shown.state == "failed" and "is not running" in shown.reason
    await b.step()
    assert iid not in b.host.vms
    assert agents.assignments(svc, b.who, b.name).migrations == []


class _BuggyPrepare(FakeDriver):
    async def prepare_incoming(self, spec: VMSpec, address: str, disk_bytes: int
                               ) -> IncomingMigration:
        raise TypeError("a bug in the driver")


async def test_a_bug_in_a_step_fails_its_migration_not_the_hosts_pass(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    """An unexpected exception in one migration's step used to leave the pass (and kill the
    agent, and each agent restarted after it): the host's volumes and instances waited for
    the migration's deadline (issue 25's storm stall). It fails that migration instead."""
    a, b, iid = cloud
    await _start_vm(a, iid)
    before = _used(svc)
    b.restart_with(_BuggyPrepare(b.host, check_paths=False))
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()  # no exception out of the pass
    shown = migrations.show(svc, ADMIN, mig.id)
    assert shown.state == "failed" and "a bug in the driver" in shown.reason
    await a.step()
    await b.step()  # the destination's abort: its part released
    assert _used(svc) == before and _host_of(svc, iid) == AGENT_HOST
    assert a.host.vms[iid].observed.power is PowerState.RUNNING


def test_refused_requests_say_why_and_change_nothing(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    _a, _b, _iid = cloud
    hosts.register(svc, ADMIN, name="host-c", zone="local-1b", architectures=["x86_64"],
                   vcpus=4, ram_mib=4096, driver="fake", accel="fake", agent_url="",
                   underlay_ip="10.250.0.3")
    member = Principal(role=Role.MEMBER, project_id="whatever")
    state = stored_state(svc)

    def refused(code: str, who: Principal = ADMIN, ref: str = "vm", to: str | None = B) -> str:
        with pytest.raises(CumuloError) as e:
            migrations.start(svc, who, None, ref, to=to)
        assert e.value.code == code, e.value.message
        assert "\n" not in e.value.message
        return e.value.message

    refused("forbidden", member)
    refused("same_host", to=AGENT_HOST)
    assert "zone local-1b" in refused("other_zone", to="host-c")
    refused("unknown_host", to="nope")
    refused("invalid_name", to="../etc")
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == B).values(disabled=True))
    refused("host_disabled")
    assert refused("no_host_fits", to=None) == (
        "no host fits: zone local-1a has 1 host: 1 disabled (besides host-a, where it runs)")
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == B).values(disabled=False,
                                                                  state="down"))
    refused("host_down")
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == B).values(state="up"))
    assert stored_state(svc) == state
    instances.act(svc, ADMIN, None, "vm", Action.STOP)
    refused("invalid_state")
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(MigrationRow)) == 0
