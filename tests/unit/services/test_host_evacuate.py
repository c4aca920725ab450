"""`host evacuate` with the fake driver on fake hosts: a down host's running and stopped
instances are placed elsewhere with their addresses kept, an up host is refused, what cannot
be placed is said and stays, and the old host, when its agent is heard from again, destroys
its copies of the evacuated instances rather than running them (never a split brain)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cumulo.agent.main import _pass as agent_pass
from cumulo.agent.reconciler import Reconciler
from cumulo.db.tables import HostRow, InstanceRow, VolumeRow
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import Action
from cumulo.protocol import Assignment, Observation
from cumulo.services import (
    agents,
    host_admin,
    host_evacuate,
    hosts,
    instance_events,
    instances,
    migrations,
    volumes,
)
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, AGENT_HOST, stored_state
from tests.unit.services.test_migrations import B, Side, _host_of, _running, _start_vm, cloud

__all__ = ["cloud"]  # the fixture, shared

LOST = "evacuated from a down host; boot disk recreated from image tiny"


def _down(svc: Services, name: str) -> None:
    """The host's agent went silent long ago; the sweep marks it down."""
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == name)
                  .values(last_seen=datetime.now(UTC) - timedelta(minutes=1)))
    assert hosts.sweep_down(svc) == [name]


def _addresses(a: Assignment) -> tuple[object, ...]:
    """What the instance keeps: id, name, NICs (IP, MAC), public IP, FQDN, firewall."""
    return (a.id, a.hostname, a.nics, a.public_ip, a.fqdn, a.ingress, a.desired_power)


def _assigned(svc: Services, side: Side) -> dict[str, Assignment]:
    return {x.id: x for x in agents.assignments(svc, side.who, side.name).instances}


async def test_a_down_hosts_instances_move_with_their_addresses(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, running = cloud
    stopped = _running(svc, a, "vm-2")
    instances.act(svc, ADMIN, None, "vm-2", Action.STOP)
    agents.report(svc, a.who, a.name, [Observation(id=stopped, state="stopped", generation=2)])
    await _start_vm(a, running)
    before = _assigned(svc, a)
    _down(svc, AGENT_HOST)

    out = host_evacuate.evacuate(svc, ADMIN, AGENT_HOST)

    assert [(m.instance, m.destination, m.state) for m in out.moved] == [
        ("vm", B, "pending"), ("vm-2", B, "stopped")]
    assert out.unmoved == []
    assert all(m.note == "boot disk recreated from image tiny" for m in out.moved)
    assert "boot disks are not recovered" in out.note
    assert _host_of(svc, running) == _host_of(svc, stopped) == B
    after = _assigned(svc, b)
    for iid in (running, stopped):
        assert _addresses(after[iid]) == _addresses(before[iid])
    assert (after[running].desired_power, after[stopped].desired_power) == ("running", "stopped")
    assert agents.assignments(svc, b.who, b.name).migrations == []  # a plain start for b
    shown = instances.get(svc, ADMIN, None, "vm")
    assert (shown.state, shown.host, shown.state_reason) == ("pending", B, LOST)
    host = host_admin.show(svc, ADMIN, AGENT_HOST)
    assert host.disabled_reason == "evacuated"
    # Each move is a record of its own, ended at once.
    records = migrations.list_all(svc, ADMIN)
    assert [(r.instance, r.source, r.destination, r.state, r.reason) for r in records] == [
        ("vm", AGENT_HOST, B, "evacuated", LOST), ("vm-2", AGENT_HOST, B, "evacuated", LOST)]
    # The event log: admins read the hosts, the instance's users do not.
    mig = out.moved[0].migration
    admin_log = [(e.kind, e.detail) for e in instance_events.list_for(svc, ADMIN, None, "vm")]
    assert ("evacuated", f"{mig} from {AGENT_HOST} to {B}: {LOST}") in admin_log
    with svc.db.session() as s:
        project = s.scalar(select(InstanceRow.project_id).where(InstanceRow.id == running))
    member = Principal(role=Role.MEMBER, project_id=project)
    user_log = [(e.kind, e.detail) for e in instance_events.list_for(svc, member, None, "vm")]
    assert ("evacuated", f"{mig}: {LOST}") in user_log
    assert not any(AGENT_HOST in d or B in d for _, d in user_log)


def test_refused_for_a_host_that_is_up_or_unknown_and_nothing_changes(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    state = stored_state(svc)
    member = Principal(role=Role.MEMBER, project_id="whatever")
    for who, name, code in ((ADMIN, AGENT_HOST, "host_up"), (ADMIN, "nope", "unknown_host"),
                            (ADMIN, "../etc", "invalid_name"), (member, AGENT_HOST, "forbidden")):
        with pytest.raises(CumuloError) as e:
            host_evacuate.evacuate(svc, who, name)
        assert e.value.code == code, e.value.message
        assert "\n" not in e.value.message
    assert stored_state(svc) == state
    with pytest.raises(CumuloError) as e:
        host_evacuate.evacuate(svc, ADMIN, AGENT_HOST)
    assert e.value.message == ("host host-a is up: evacuate restarts the instances of a host "
                               "that is down (move them live with `cumulo host drain host-a`)")


async def test_what_cannot_be_placed_is_said_and_stays(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, _b, small = cloud
    big = instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="big", image="tiny", vcpus=1, ram_mib=4000)).id
    with_volume = _running(svc, a, "vm-vol")
    vol = volumes.create(svc, ADMIN, None, "data", 1).id
    with svc.db.session() as s:  # on a, whatever the scheduler chose; the volume attached
        host_a = agents.host_id(svc, a.who, a.name)
        s.execute(update(InstanceRow).where(InstanceRow.id == big).values(host_id=host_a))
        s.execute(update(VolumeRow).where(VolumeRow.id == vol)
                  .values(host_id=host_a, attached_to=with_volume,
                          want_instance_id=with_volume))
    _down(svc, AGENT_HOST)

    out = host_evacuate.evacuate(svc, ADMIN, AGENT_HOST)

    # The volume was on the down host: the instance restarts without it (see
    # test_evacuate_volumes); what no host can take stays.
    assert [(m.instance, m.volumes_left) for m in out.moved] == [
        ("vm", []), ("vm-vol", ["data"])]
    assert [(u.instance, u.reason) for u in out.unmoved] == [
        ("big", "no host fits: zone local-1a has 1 host: 1 lacks 4000 MiB RAM (largest free: "
                "3968) (besides host-a, which is down)")]
    assert _host_of(svc, big) == AGENT_HOST
    assert _host_of(svc, small) == _host_of(svc, with_volume) == B
    # Evacuated again (more room now, or not): only what is still there is considered.
    again = host_evacuate.evacuate(svc, ADMIN, AGENT_HOST)
    assert (again.moved, [u.instance for u in again.unmoved]) == ([], ["big"])


async def test_the_old_host_back_destroys_its_copies_and_does_not_report_them(
        svc: Services, cloud: tuple[Side, Side, str], tmp_path: Path) -> None:
    a, _b, iid = cloud
    await _start_vm(a, iid)
    _down(svc, AGENT_HOST)
    mig = host_evacuate.evacuate(svc, ADMIN, AGENT_HOST).moved[0].migration
    assert iid in a.host.vms  # the host was cut off, not dead: its VM still runs

    # Its agent is heard from again: its next pass discards the copy before anything else.
    batch = agents.assignments(svc, a.who, a.name)
    assert iid not in {x.id for x in batch.instances}
    assert [(m.id, m.role, m.step) for m in batch.migrations] == [(mig, "source", "discard")]
    report = await agent_pass(Reconciler(a.driver, tmp_path / "a-vms"), batch, None, a.mrec)
    assert report is not None
    agents.report(svc, a.who, a.name, report.observations, migrations=report.migrations)
    assert iid not in a.host.vms and a.removed == [iid]
    assert all(o.id != iid for o in report.observations)
    assert agents.assignments(svc, a.who, a.name).migrations == []  # done, said once
    # A late report of the old copy (sent before it was discarded) changes nothing.
    agents.report(svc, a.who, a.name, [Observation(id=iid, state="running", generation=99)])
    shown = instances.get(svc, ADMIN, None, "vm")
    assert (shown.host, shown.state) == (B, "pending")


async def test_a_host_holding_a_stale_copy_is_not_chosen(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, _b, iid = cloud
    _down(svc, AGENT_HOST)
    host_evacuate.evacuate(svc, ADMIN, AGENT_HOST)
    host_admin.set_disabled(svc, ADMIN, AGENT_HOST, False)
    agents.assignments(svc, a.who, a.name)  # a is up again (its discard not yet done)
    _down(svc, B)

    out = host_evacuate.evacuate(svc, ADMIN, B)

    assert out.moved == [] and [u.instance for u in out.unmoved] == ["vm"]
    assert out.unmoved[0].reason == (
        "no host fits: zone local-1a has no hosts (besides host-b, which is down; host-a, "
        "which holds an older copy of it)")
    assert _host_of(svc, iid) == B
