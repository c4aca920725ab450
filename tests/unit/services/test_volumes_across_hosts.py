"""Volumes across hosts, control plane: where a new volume is stored (the scheduler), and an
attach to an instance of another host carried by the agents' assignments (a fresh NBD export
with its secrets to both hosts, nothing else) through real volume reconcilers on the fake
driver: attached over NBD, reported by the instance's host, the export dropped once the
instance's host let go."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from cumulo.agent.drivers.base import NbdExport, VMSpec
from cumulo.agent.drivers.fake import FakeDriver, FakeHost
from cumulo.agent.storage.nbd_exports import RecordingExporter
from cumulo.agent.storage.volumes import VolumeStore
from cumulo.agent.volume_reconciler import VolumeReconciler
from cumulo.db.tables import InstanceRow, VolumeRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import InsufficientCapacity
from cumulo.domain.instance import Action
from cumulo.protocol import Observation
from cumulo.services import agents, hosts, instances, volumes
from cumulo.services.context import Principal, Role, Services
from cumulo.services.volume_placement import StorageCandidate, storage_host
from tests.conftest import ADMIN, AGENT_HOST

B = "host-b"


def test_the_scheduler_stores_volumes_on_marked_hosts_least_loaded_first() -> None:
    def h(name: str, up: bool = True, storage: bool = False, gib: int = 0
          ) -> StorageCandidate:
        return StorageCandidate(f"id-{name}", name, up, storage, gib)

    assert storage_host("z", [h("a", gib=5), h("b", gib=2), h("c", gib=2)]) == "id-b"
    # any host marked `storage`: only those (even when another has more room)
    assert storage_host("z", [h("a"), h("b", storage=True, gib=9)]) == "id-b"
    assert storage_host("z", [h("a", storage=True, gib=3), h("b", storage=True, gib=1),
                              h("c")]) == "id-b"
    with pytest.raises(InsufficientCapacity, match="no storage host is up"):
        storage_host("z", [h("a"), h("b", up=False, storage=True)])
    with pytest.raises(InsufficientCapacity, match="no host is up"):
        storage_host("z", [h("a", up=False)])


class Host:
    """One fake host: a real volume reconciler (files in tmp) on the fake driver."""

    def __init__(self, svc: Services, name: str, root: Path) -> None:
        self.svc, self.name = svc, name
        self.who = Principal(role=Role.AGENT, host_name=name)
        self.driver = FakeDriver(FakeHost(), check_paths=False)
        self.exporter = RecordingExporter()
        self.vrec = VolumeReconciler(self.driver, VolumeStore(root / name),
                                     exporter=self.exporter)

    async def step(self) -> None:
        batch = agents.assignments(self.svc, self.who, self.name)
        running = set(self.driver.host.vms)
        vols, snaps = await self.vrec.run_pass(batch.volumes, batch.snapshots, running)
        agents.report(self.svc, self.who, self.name, [], volumes=vols, snapshots=snaps)
        self.vrec.acknowledge(vols, snaps)


async def vm_and_storage_host(svc: Services, tmp_path: Path) -> tuple[Host, Host, str]:
    """host-a, running "vm", and host-b, the zone's storage host."""
    for name, ip, storage in ((AGENT_HOST, "10.250.0.1", False), (B, "10.250.0.2", True)):
        hosts.register(svc, ADMIN, name=name, zone="local-1a", architectures=["x86_64"],
                       vcpus=4, ram_mib=4096, driver="fake", accel="fake", agent_url="",
                       underlay_ip=ip, storage=storage)
    a, b = Host(svc, AGENT_HOST, tmp_path), Host(svc, B, tmp_path)
    iid = instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="vm", image="tiny", type="t1.nano")).id
    with svc.db.session() as s:
        s.execute(update(InstanceRow).where(InstanceRow.id == iid)
                  .values(host_id=agents.host_id(svc, a.who, a.name)))
    agents.report(svc, a.who, a.name, [Observation(id=iid, state="running", generation=1)])
    await a.driver.start(VMSpec(vm_id=iid, hostname="vm", arch=Arch.X86_64, vcpus=1,
                                ram_mib=128, boot_disk=tmp_path / "unused"))
    return a, b, iid


async def test_a_volume_attaches_to_an_instance_of_another_host_over_nbd(
        svc: Services, tmp_path: Path) -> None:
    a, b, iid = await vm_and_storage_host(svc, tmp_path)

    vol = volumes.create(svc, ADMIN, None, "data", 1, zone="local-1a")
    await b.step()  # b is the only storage host: the file is made there
    assert (tmp_path / B / "volumes" / f"{vol.id}.qcow2").is_file()
    assert volumes.show(svc, ADMIN, None, "data").state == "available"
    assert not agents.assignments(svc, a.who, a.name).volumes  # nothing of it on a yet

    volumes.attach(svc, ADMIN, None, "data", "vm")
    (on_b,) = agents.assignments(svc, b.who, b.name).volumes
    (on_a,) = agents.assignments(svc, a.who, a.name).volumes
    assert on_b.export is not None and on_b.remote is None and on_b.attach_to is None
    assert on_a.remote is not None and on_a.export is None and on_a.attach_to == iid
    assert (on_a.remote.host, on_a.remote.port) == ("10.250.0.2", on_b.export.port)
    assert (on_a.remote.name, on_a.remote.key) == (on_b.export.name, on_b.export.key)
    assert len(on_a.remote.name) == 32 and len(on_a.remote.key) == 64
    assert on_a.source_snapshot is None

    await b.step()  # exports it
    assert set(b.exporter.exports) == {vol.id}
    await a.step()  # plugs it in over NBD and says so
    att = a.driver.host.vms[iid].volumes[vol.id]
    assert att.source == NbdExport("10.250.0.2", on_b.export.port, on_b.export.name,
                                   on_b.export.key)
    assert att.path is None
    v = volumes.show(svc, ADMIN, None, "data")
    assert (v.state, v.attached_to) == ("in-use", "vm")
    await b.step()  # the storage host's own report does not undo the client's
    assert volumes.show(svc, ADMIN, None, "data").state == "in-use"

    # a grow across hosts: the storage host grows the exported file, the instance's host
    # the disk its VM sees (it waits for the export when it comes first: in-use, said why)
    volumes.resize(svc, ADMIN, None, "data", 2)
    await a.step()
    assert volumes.show(svc, ADMIN, None, "data").state == "in-use"
    await b.step()
    assert b.vrec.store.volume_size(vol.id) == 2**31
    assert set(b.exporter.exports) == {vol.id}  # still exported, never detached
    await a.step()
    assert volumes.show(svc, ADMIN, None, "data").size_gib == 2
    # a snapshot is taken on the storage host, of the exported volume
    snap = volumes.snapshot(svc, ADMIN, None, "data", "s1")
    await b.step()
    assert (tmp_path / B / "snapshots" / f"{snap.id}.qcow2").is_file()
    assert volumes.list_snapshots(svc, ADMIN, None)[0].state == "available"

    volumes.detach(svc, ADMIN, None, "data")
    await a.step()  # unplugs; reports it free: the export is dropped
    assert vol.id not in a.driver.host.vms[iid].volumes
    assert agents.assignments(svc, a.who, a.name).volumes == []
    (on_b,) = agents.assignments(svc, b.who, b.name).volumes
    assert on_b.export is None
    await b.step()
    assert b.exporter.exports == {}
    assert volumes.show(svc, ADMIN, None, "data").state == "available"

    # attached again: fresh secrets (an old client's key opens nothing)
    volumes.attach(svc, ADMIN, None, "data", "vm")
    (again,) = agents.assignments(svc, b.who, b.name).volumes
    assert again.export is not None
    assert (again.export.name, again.export.key) != (on_a.remote.name, on_a.remote.key)

    # the instance is deleted with the volume attached (delete on termination): the storage
    # host keeps the file until the instance's host let go, then deletes it
    await b.step()
    await a.step()
    with svc.db.session() as s:
        s.execute(update(VolumeRow).where(VolumeRow.id == vol.id)
                  .values(delete_on_termination=True))
    instances.act(svc, ADMIN, None, "vm", Action.DELETE)
    (on_b,) = agents.assignments(svc, b.who, b.name).volumes
    assert on_b.desired == "present"  # not yet: a holds it
    await a.driver.destroy(iid)
    await a.step()
    await b.step()
    await b.step()
    assert not (tmp_path / B / "volumes" / f"{vol.id}.qcow2").exists()
    assert "data" not in {x.name for x in volumes.list_all(svc, ADMIN, None)}
