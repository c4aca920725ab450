"""Moving an instance with volumes, control plane, with the fake driver on three fake hosts
(a: the instance's, b: the destination, c: the storage host), each with its real migration
and volume reconcilers: a stopped instance's network volumes follow it (the attachment's
client host becomes the destination once it arrived: its assignment carries the export, the
source's no longer does, the storage host keeps exporting); a cancel leaves them on the
source; what cannot follow is refused with its code and changes nothing, and the scheduler
never picks the host storing one of its volumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select, update

from cumulo.agent.drivers.base import NbdExport, PowerState, VMSpec, VolumeAttachment
from cumulo.agent.drivers.fake import FakeFabric
from cumulo.agent.storage.nbd_exports import RecordingExporter
from cumulo.agent.storage.volumes import VolumeStore
from cumulo.agent.volume_reconciler import VolumeReconciler
from cumulo.db.tables import HostRow, InstanceRow, MigrationRow, VolumeRow
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import Action
from cumulo.protocol import Assignment, Observation, VolumeAssignment
from cumulo.services import agents, hosts, instances, migrations, volumes
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_cold_moves import DiskSide, _stopped, _until
from tests.unit.services.test_migrations import B, _host_of, register_two
from tests.unit.services.test_volumes_across_hosts import Host

C = "host-c"
S = TypeVar("S", bound="VolSide")


class VolSide(DiskSide):
    """A fake host taking part in moves, whose volume reconciler runs too."""

    def restart(self) -> None:
        super().restart()
        self.vrec = VolumeReconciler(self.driver, VolumeStore(self.root / self.name),
                                     exporter=RecordingExporter())

    async def step(self) -> None:
        await super().step()
        batch = agents.assignments(self.svc, self.who, self.name)
        vols, snaps = await self.vrec.run_pass(batch.volumes, batch.snapshots,
                                               set(self.driver.host.vms))
        agents.report(self.svc, self.who, self.name, [], volumes=vols, snapshots=snaps)
        self.vrec.acknowledge(vols, snaps)

    def volumes(self) -> list[VolumeAssignment]:
        return agents.assignments(self.svc, self.who, self.name).volumes


@pytest.fixture
def three(svc: Services, tmp_path: Path) -> tuple[VolSide, VolSide, Host, str]:
    """a and b (no storage), c (the storage host); "vm" stopped on a, and volume "data"
    (stored on c once c's agent made it; _attached attaches it over NBD)."""
    return _three(svc, tmp_path, VolSide)


def _three(svc: Services, tmp_path: Path, side: type[S]) -> tuple[S, S, Host, str]:
    register_two(svc)
    hosts.register(svc, ADMIN, name=C, zone="local-1a", architectures=["x86_64"], vcpus=4,
                   ram_mib=4096, driver="fake", accel="fake", agent_url="",
                   underlay_ip="10.250.0.3", storage=True)
    fabric = FakeFabric()
    a = side(svc, AGENT_HOST, fabric, tmp_path, "10.250.0.1")
    b = side(svc, B, fabric, tmp_path, "10.250.0.2")
    c = Host(svc, C, tmp_path)
    iid = _stopped(svc, a, "vm")
    volumes.create(svc, ADMIN, None, "data", 1, zone="local-1a")  # on c: the storage host
    return a, b, c, iid


async def _attached(a: VolSide, c: Host) -> None:
    await c.step()  # the file, on c
    volumes.attach(a.svc, ADMIN, None, "data", "vm")
    await c.step()  # exported
    await a.step()  # attached (cold: at the next start) and said so
    v = volumes.show(a.svc, ADMIN, None, "data")
    assert (v.state, v.attached_to) == ("in-use", "vm")


def _client(svc: Services) -> str | None:
    """The name of the host attached to volume "data" over NBD (its client host)."""
    with svc.db.session() as s:
        return s.scalar(select(HostRow.name).join(
            VolumeRow, VolumeRow.client_host_id == HostRow.id).where(VolumeRow.name == "data"))


async def test_a_stopped_instance_moves_cold_and_its_network_volume_follows(
        svc: Services, three: tuple[VolSide, VolSide, Host, str]) -> None:
    a, b, c, iid = three
    await _attached(a, c)
    (before,) = agents.assignments(svc, c.who, c.name).volumes
    assert before.export is not None and _client(svc) == AGENT_HOST
    mig = migrations.start(svc, ADMIN, None, "vm")  # the scheduler: b (c stores its volume)
    assert mig.destination == B and mig.cold
    assert not b.volumes()  # nothing of the volume on b before the arrival
    await _until(svc, mig.id, b, a, states=("completed",))
    assert _host_of(svc, iid) == B and _client(svc) == B
    # b attaches it over the same export (c's), a has nothing of it any more
    (on_b,) = b.volumes()
    (on_c,) = agents.assignments(svc, c.who, c.name).volumes
    assert on_b.attach_to == iid and on_b.remote is not None and on_c.export is not None
    assert (on_b.remote.host, on_b.remote.port, on_b.remote.name, on_b.remote.key) == (
        "10.250.0.3", on_c.export.port, on_c.export.name, on_c.export.key)
    assert not a.volumes()
    await a.step()
    await b.step()
    await c.step()
    v = volumes.show(svc, ADMIN, None, "data")
    assert (v.state, v.attached_to) == ("in-use", "vm") and _client(svc) == B
    # the instance starts on b with its volume attached over NBD
    instances.act(svc, ADMIN, None, "vm", Action.START)
    assert b.vrec.attachments_for(iid)[0].volume_id == v.id


async def test_a_cancelled_cold_move_leaves_the_volume_with_the_source(
        svc: Services, three: tuple[VolSide, VolSide, Host, str]) -> None:
    a, b, c, iid = three
    await _attached(a, c)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    await a.step()
    # its volumes stay as they were checked at the start until the move ended
    with pytest.raises(CumuloError) as err:
        volumes.detach(svc, ADMIN, None, "data")
    assert err.value.code == "migration_in_progress"
    with pytest.raises(CumuloError) as err:
        volumes.resize(svc, ADMIN, None, "data", 2)
    assert err.value.code == "migration_in_progress"
    assert volumes.show(svc, ADMIN, None, "data").size_gib == 1
    volumes.create(svc, ADMIN, None, "more", 1, zone="local-1a")
    await c.step()
    with pytest.raises(CumuloError) as err:
        volumes.attach(svc, ADMIN, None, "more", "vm")
    assert err.value.code == "migration_in_progress"
    assert migrations.cancel(svc, ADMIN, mig.id).state == "cancelled"
    for _ in range(2):
        await a.step()
        await b.step()
    assert _host_of(svc, iid) == AGENT_HOST and _client(svc) == AGENT_HOST
    assert [v.attach_to for v in a.volumes()] == [iid] and not b.volumes()
    v = volumes.show(svc, ADMIN, None, "data")
    assert (v.state, v.attached_to) == ("in-use", "vm")


def _refused(svc: Services, code: str, to: str | None = None) -> str:
    with pytest.raises(CumuloError) as err:
        migrations.start(svc, ADMIN, None, "vm", to=to)
    assert err.value.code == code, err.value.message
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(MigrationRow)) == 0
    return err.value.message


async def test_what_cannot_follow_is_refused_and_changes_nothing(
        svc: Services, three: tuple[VolSide, VolSide, Host, str]) -> None:
    a, _b, c, iid = three
    await c.step()
    volumes.attach(svc, ADMIN, None, "data", "vm")  # not yet reported attached by a
    assert "being attached or detached" in _refused(svc, "volume_busy", to=B)
    await c.step()
    await a.step()
    # c stores the volume: never the destination, named or by the scheduler (b disabled:
    # nothing else fits, and the answer says c was skipped for its volumes)
    assert "stores volume data" in _refused(svc, "volume_on_destination", to=C)
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == B).values(disabled=True))
    assert "host-c, which stores its volumes" in _refused(svc, "no_host_fits")
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == B).values(disabled=False))
    # a volume stored on the instance's own host (a local file) does not follow
    volumes.create(svc, ADMIN, None, "loc", 1, zone="local-1a")
    with svc.db.session() as s:
        a_id = s.scalar(select(HostRow.id).where(HostRow.name == AGENT_HOST))
        s.execute(update(VolumeRow).where(VolumeRow.name == "loc")
                  .values(host_id=a_id, state="available"))
    volumes.attach(svc, ADMIN, None, "loc", "vm")
    with svc.db.session() as s:  # as a reports it once plugged
        s.execute(update(VolumeRow).where(VolumeRow.name == "loc")
                  .values(attached_to=iid, state="in-use"))
    assert "stored on its own host" in _refused(svc, "volume_on_source", to=B)
    # ... running too (a live migration)
    instances.act(svc, ADMIN, None, "vm", Action.START)
    with svc.db.session() as s:
        gen = s.scalar(select(InstanceRow.generation).where(InstanceRow.id == iid))
    agents.report(svc, a.who, a.name, [Observation(id=iid, state="running",
                                                   generation=int(gen or 0))])
    assert "stored on its own host" in _refused(svc, "volume_on_source", to=B)
    assert _client(svc) == AGENT_HOST


def _plugs(side: VolSide) -> list[str]:
    """Record each hot-plug and unplug asked of `side`'s driver (and still do it)."""
    calls: list[str] = []
    attach, detach = side.driver.attach_volume, side.driver.detach_volume

    async def attach_spy(vm_id: str, att: VolumeAttachment) -> None:
        calls.append(f"{side.name}: attach {att.volume_id} to {vm_id}")
        await attach(vm_id, att)

    async def detach_spy(vm_id: str, volume_id: str, timeout_s: float) -> None:
        calls.append(f"{side.name}: detach {volume_id} from {vm_id}")
        await detach(vm_id, volume_id, timeout_s)

    setattr(side.driver, "attach_volume", attach_spy)  # noqa: B010 (a method replaced)
    setattr(side.driver, "detach_volume", detach_spy)  # noqa: B010
    return calls


class LiveSide(VolSide):
    """A host whose VMs start with the volumes they are assigned, and whose pass runs as the
    agent's (agent.main._pass): the volume assignments taken before the migration step, and
    no VM arriving here counted as running by the volume reconciler."""

    async def _spec(self, a: Assignment) -> VMSpec:
        spec = await super()._spec(a)
        return dataclasses.replace(spec, volumes=self.vrec.attachments_for(a.id))

    async def step(self) -> None:
        batch = agents.assignments(self.svc, self.who, self.name)
        self.vrec.expect(batch.volumes)
        obs = await self.mrec.run_pass(batch.migrations)
        agents.report(self.svc, self.who, self.name, [], migrations=obs)
        self.mrec.acknowledge(obs)
        batch = agents.assignments(self.svc, self.who, self.name)
        arriving = {m.instance_id for m in batch.migrations if m.role == "destination"}
        live = {vm for vm, o in (await self.driver.observe()).items()
                if o.power is not PowerState.STOPPED} - arriving
        vols, snaps = await self.vrec.run_pass(batch.volumes, batch.snapshots, live)
        agents.report(self.svc, self.who, self.name, [], volumes=vols, snapshots=snaps)
        self.vrec.acknowledge(vols, snaps)


async def _running_with_volume(svc: Services, tmp_path: Path
                               ) -> tuple[LiveSide, LiveSide, Host, str, str]:
    """a, b (LiveSide), c (the storage host); "vm" running on a with volume "data" of c
    attached over NBD (on its command line), reported so; the instance's and volume's ids."""
    a, b, c, iid = _three(svc, tmp_path, LiveSide)
    await _attached(a, c)
    vol_id = volumes.show(svc, ADMIN, None, "data").id
    instances.act(svc, ADMIN, None, "vm", Action.START)
    (assigned,) = [i for i in agents.assignments(svc, a.who, a.name).instances if i.id == iid]
    await a.driver.start(await a._spec(assigned))
    agents.report(svc, a.who, a.name, [Observation(id=iid, state="running",
                                                   generation=assigned.generation)])
    assert set(a.driver.host.vms[iid].volumes) == {vol_id}
    return a, b, c, iid, vol_id


async def test_a_running_instance_migrates_live_with_its_network_volume(
        svc: Services, tmp_path: Path) -> None:
    a, b, c, iid, vol_id = await _running_with_volume(svc, tmp_path)
    await b.step()  # b holds a view of its assignments from before the migration
    plugs = (_plugs(a), _plugs(b))  # no hot-plug nor unplug on either host while it moves
    mig = migrations.start(svc, ADMIN, None, "vm")  # the scheduler: b (c stores the volume)
    assert mig.destination == B and not mig.cold
    await b.step()  # b prepares: its incoming VM opens the same export as a's
    (on_b,) = b.volumes()
    (on_c,) = agents.assignments(svc, c.who, c.name).volumes
    assert on_b.attach_to == iid and on_b.remote is not None and on_c.export is not None
    assert (on_b.remote.port, on_b.remote.name, on_b.remote.key) == (
        on_c.export.port, on_c.export.name, on_c.export.key)
    incoming = b.driver.host.vms[iid]
    assert set(incoming.volumes) == {vol_id}
    assert isinstance(incoming.volumes[vol_id].source, NbdExport)
    assert _client(svc) == AGENT_HOST  # a is the client until the arrival
    await _until(svc, mig.id, b, a, states=("completed",))
    assert _host_of(svc, iid) == B and _client(svc) == B
    assert not a.volumes() and iid not in a.driver.host.vms  # a let go when its VM stopped
    assert plugs == ([], [])
    assert set(b.driver.host.vms[iid].volumes) == {vol_id}
    for side in (a, b, c, a, b):
        await side.step()
    v = volumes.show(svc, ADMIN, None, "data")
    assert (v.state, v.attached_to, v.state_reason) == ("in-use", "vm", "")
    assert agents.assignments(svc, c.who, c.name).volumes[0].export == on_c.export


async def test_a_live_migration_cancelled_leaves_the_volume_with_the_source(
        svc: Services, tmp_path: Path) -> None:
    a, b, _c, iid, vol_id = await _running_with_volume(svc, tmp_path)
    mig = migrations.start(svc, ADMIN, None, "vm", to=B)
    await b.step()
    assert set(b.driver.host.vms[iid].volumes) == {vol_id}
    assert migrations.cancel(svc, ADMIN, mig.id).state == "cancelled"
    for _ in range(3):
        await a.step()
        await b.step()
    assert _host_of(svc, iid) == AGENT_HOST and _client(svc) == AGENT_HOST
    assert iid not in b.driver.host.vms and set(a.driver.host.vms[iid].volumes) == {vol_id}
    v = volumes.show(svc, ADMIN, None, "data")
    assert (v.state, v.attached_to) == ("in-use", "vm")
