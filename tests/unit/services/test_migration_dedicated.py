"""A dedicated instance that moves to another dedicated host gets host CPUs there picked
again (free ones: not another instance's, nor another arriving migration's), its destination
pins to them before the guest runs there, and they are the instance's once it arrived
(fake driver, two fake hosts each dedicated to the project)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from cumulo.agent.drivers.base import VMSpec
from cumulo.agent.drivers.fake import FakeFabric
from cumulo.db.tables import InstanceRow, MigrationRow
from cumulo.protocol import Assignment, Observation
from cumulo.services import agents, dedicated_hosts, instances, migrations
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_migrations import B, Side, _host_of, _start_vm, register_two


class PinnedSide(Side):
    async def _spec(self, a: Assignment) -> VMSpec:
        spec = await super()._spec(a)
        return VMSpec(**{**spec.__dict__, "cpu_set": tuple(a.cpu_set)})


def _cpus(svc: Services, iid: str) -> list[int] | None:
    with svc.db.session() as s:
        return s.scalar(select(InstanceRow.cpu_set).where(InstanceRow.id == iid))


def _create(svc: Services, side: Side, name: str, dh: str) -> str:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano", dedicated_host=dh)
    iid = instances.create(svc, ADMIN, None, req).id
    agents.report(svc, side.who, side.name, [Observation(id=iid, state="running", generation=1)])
    return iid


async def test_a_dedicated_instance_gets_free_cpus_on_its_new_host(
        svc: Services, tmp_path: Path) -> None:
    register_two(svc)
    fabric = FakeFabric()
    a = PinnedSide(svc, AGENT_HOST, fabric, tmp_path, "10.250.0.1")
    b = PinnedSide(svc, B, fabric, tmp_path, "10.250.0.2")
    dh_a = dedicated_hosts.allocate(svc, ADMIN, None, "local-1a", host=AGENT_HOST).id
    dh_b = dedicated_hosts.allocate(svc, ADMIN, None, "local-1a", host=B).id
    moving = _create(svc, a, "d1", dh_a)
    _create(svc, b, "d2", dh_b)
    assert _cpus(svc, moving) == [0]  # the lowest free on a; b's CPU 0 is d2's
    await _start_vm(a, moving)

    mig = migrations.start(svc, ADMIN, None, "d1", to=B)
    # Held on b from the start: a create there meanwhile gets the next CPU.
    assert _cpus(svc, _create(svc, b, "d3", dh_b)) == [2]
    await b.step()
    assert b.host.vms[moving].spec.cpu_set == (1,)  # pinned there before it runs there
    assert _cpus(svc, moving) == [0]  # still a's, on a's CPU, until it arrived
    for _ in range(20):
        await a.step()
        await b.step()
        if migrations.show(svc, ADMIN, mig.id).state == "completed":
            break
    assert migrations.show(svc, ADMIN, mig.id).state == "completed"
    assert _host_of(svc, moving) == B and _cpus(svc, moving) == [1]
    with svc.db.session() as s:
        assert s.scalar(select(MigrationRow.cpu_set).where(MigrationRow.id == mig.id)) == [1]
    (arrived,) = [x for x in agents.assignments(svc, b.who, b.name).instances if x.id == moving]
    assert arrived.cpu_set == [1]  # what b's agent pins at every start from now on
