"""A storage host that goes down (issue 19 item 3), control plane, with real volume
reconcilers on the fake driver: the volume it stores, attached over NBD to an instance of
another host, shows `error` with the reason while the host is down (its snapshots too),
the requests that need the host are refused with `storage_host_down` and change nothing,
each volume's log says when its host went and came back, and the volume is `in-use` again
the moment its host is heard from, its attachment and export untouched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cumulo.api.ec2 import instance_view
from cumulo.api.ec2.params import Params
from cumulo.api.ec2.registry import Call
from cumulo.db.tables import HostRow, InstanceRow, ProjectRow
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import Action
from cumulo.services import agents, events, hosts, instances, migrations, volumes
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, stored_state
from tests.unit.services.test_volumes_across_hosts import Host, vm_and_storage_host

B = "host-b"  # the storage host


def silent(svc: Services, name: str) -> None:
    """The host's agent went silent long ago; the sweep marks it down."""
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == name)
                  .values(last_seen=datetime.now(UTC) - timedelta(minutes=1)))
    assert hosts.sweep_down(svc) == [name]


@pytest.fixture
async def attached(svc: Services, tmp_path: Path) -> tuple[Host, Host, str]:
    """"vm" running on host-a with volume "data" (stored on host-b) attached over NBD, and
    snapshot "s1" of it (on host-b)."""
    a, b, iid = await vm_and_storage_host(svc, tmp_path)
    volumes.create(svc, ADMIN, None, "data", 1, zone="local-1a")
    await b.step()
    volumes.attach(svc, ADMIN, None, "data", "vm")
    await b.step()
    await a.step()
    volumes.snapshot(svc, ADMIN, None, "data", "s1")
    await b.step()
    assert volumes.show(svc, ADMIN, None, "data").state == "in-use"
    assert volumes.list_snapshots(svc, ADMIN, None)[0].state == "available"
    return a, b, iid


async def test_a_volume_whose_storage_host_is_down_shows_error_and_recovers(
        svc: Services, attached: tuple[Host, Host, str]) -> None:
    a, b, _iid = attached
    volumes.create(svc, ADMIN, None, "spare", 1, zone="local-1a")
    await b.step()
    (export_before,) = agents.assignments(svc, b.who, b.name).volumes[:1]

    silent(svc, B)

    reason = ("its storage host host-b is down: its data cannot be read or written until the "
              "host is back")
    shown = {v.name: v for v in volumes.list_all(svc, ADMIN, None)}
    assert (shown["data"].state, shown["data"].state_reason) == ("error", reason)
    assert shown["data"].attached_to == "vm"  # still attached: the instance runs on
    assert (shown["spare"].state, shown["spare"].state_reason) == ("error", reason)
    snap = volumes.list_snapshots(svc, ADMIN, None)[0]
    assert (snap.state, snap.state_reason) == ("error", reason)
    log = [(e.resource_name, e.kind, e.detail) for e in events.list_events(svc, ADMIN)
           if e.resource_type == "volume" and e.kind.startswith("storage_host")]
    assert log == [("data", "storage_host_down", reason), ("spare", "storage_host_down", reason)]
    # The instance's host still holds the attachment as it was; nothing to redo later.
    (on_a,) = agents.assignments(svc, a.who, a.name).volumes
    assert export_before.export is not None and on_a.remote is not None
    assert on_a.remote.name == export_before.export.name

    # What needs the storage host is refused, said why, and changes nothing.
    state = stored_state(svc)
    refusals = (
        (lambda: volumes.attach(svc, ADMIN, None, "spare", "vm"), "attach volume 'spare'"),
        (lambda: volumes.snapshot(svc, ADMIN, None, "data", "s2"), "snapshot volume 'data'"),
        (lambda: volumes.resize(svc, ADMIN, None, "spare", 2), "grow volume 'spare'"),
        (lambda: volumes.create(svc, ADMIN, None, "copy", 1, zone="local-1a",
                                from_snapshot="s1"), "make a volume from snapshot 's1'"),
        (lambda: migrations.start(svc, ADMIN, None, "vm"),
         "move instance 'vm' with volume data"),
    )
    for call, what in refusals:
        with pytest.raises(CumuloError) as err:
            call()
        assert (err.value.code, err.value.message) == ("storage_host_down",
                                                       f"cannot {what}: {reason}")
    assert stored_state(svc) == state

    # Its agent is heard from again: the volumes show what their hosts last said.
    agents.assignments(svc, b.who, b.name)
    shown = {v.name: v for v in volumes.list_all(svc, ADMIN, None)}
    assert [(shown[n].state, shown[n].state_reason) for n in ("data", "spare")] == [
        ("in-use", ""), ("available", "")]
    assert shown["data"].attached_to == "vm"
    assert volumes.list_snapshots(svc, ADMIN, None)[0].state == "available"
    back = [(e.resource_name, e.detail) for e in events.list_events(svc, ADMIN)
            if e.kind == "storage_host_up"]
    assert back == [("data", "its storage host host-b is back"),
                    ("spare", "its storage host host-b is back")]
    # The same export as before: its daemon restarted with the same name and key.
    assert agents.assignments(svc, b.who, b.name).volumes[0].export == export_before.export
    volumes.snapshot(svc, ADMIN, None, "data", "s2")


async def test_ec2_still_shows_the_attachment_while_the_volume_s_host_is_down(
        svc: Services, attached: tuple[Host, Host, str]) -> None:
    with svc.db.session() as s:
        project_id = s.scalar(select(ProjectRow.id).where(ProjectRow.name == "default"))
    who = Principal(role=Role.ADMIN, project_id=project_id)
    call = Call(svc=svc, who=who, project="default", region="local-1", params=Params({}),
                action="DescribeInstances", request_id="r")
    silent(svc, B)
    assert volumes.show(svc, ADMIN, None, "data").state == "error"
    (disk,) = instance_view.context(call).disks["vm"]
    assert disk["ebs"]["status"] == "attached", disk


async def test_a_stopped_instance_does_not_start_while_its_volume_s_host_is_down(
        svc: Services, attached: tuple[Host, Host, str]) -> None:
    _a, b, iid = attached
    instances.act(svc, ADMIN, None, "vm", Action.STOP)
    with svc.db.session() as s:  # as its host reports once the VM is off
        s.execute(update(InstanceRow).where(InstanceRow.id == iid).values(state="stopped"))
    silent(svc, B)

    state = stored_state(svc)
    with pytest.raises(CumuloError) as err:
        instances.act(svc, ADMIN, None, "vm", Action.START)
    assert (err.value.code, err.value.message) == (
        "storage_host_down", "cannot start instance 'vm' with volume 'data': its storage host "
        "host-b is down: its data cannot be read or written until the host is back")
    assert stored_state(svc) == state

    agents.assignments(svc, b.who, b.name)  # heard from again
    assert instances.act(svc, ADMIN, None, "vm", Action.START).state == "starting"


async def test_a_detach_or_delete_is_taken_and_completes_when_the_host_is_back(
        svc: Services, attached: tuple[Host, Host, str]) -> None:
    a, b, iid = attached
    silent(svc, B)
    assert volumes.detach(svc, ADMIN, None, "data").state == "error"  # its host is down
    await a.step()  # the instance's host lets go of the export at once
    assert iid in a.driver.host.vms and not a.driver.host.vms[iid].volumes
    agents.assignments(svc, b.who, b.name)  # back
    await b.step()  # stops exporting it
    assert b.exporter.exports == {}
    v = volumes.show(svc, ADMIN, None, "data")
    assert (v.state, v.attached_to) == ("available", None)
    silent(svc, B)
    assert volumes.delete(svc, ADMIN, None, "data").state == "deleting"
    assert volumes.show(svc, ADMIN, None, "data").state_reason == (
        "waits for its storage host host-b, which is down")
    agents.assignments(svc, b.who, b.name)
    await b.step()
    assert "data" not in {v.name for v in volumes.list_all(svc, ADMIN, None)}
