"""`host evacuate` of an instance with volumes (issue 20 item 5), control plane, with the
fake driver on three fake hosts (a: the instance's, which goes down; b; c: the storage host)
and their real volume and migration reconcilers: a volume stored on another host follows the
instance, attached again from its new host over a new export (fresh name and key: the down
host's old export is closed); a volume stored on the down host is left there, detached, and
is `available` once that host is back; the move, its record and the event log say which."""

from __future__ import annotations

from sqlalchemy import select, update

from cumulo.db.tables import HostRow, VolumeRow
from cumulo.domain.instance import Action
from cumulo.services import agents, host_admin, host_evacuate, instance_events, instances, volumes
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_migration_volumes import C, VolSide, _attached, _client, three
from tests.unit.services.test_migrations import B, _host_of
from tests.unit.services.test_storage_down import silent
from tests.unit.services.test_volumes_across_hosts import Host

__all__ = ["three"]  # the fixture, shared


def _stored_on_a(svc: Services, name: str, iid: str) -> str:
    """Volume `name`, stored on host-a (a local file there), attached to instance `iid`."""
    vol = volumes.create(svc, ADMIN, None, name, 1, zone="local-1a").id
    with svc.db.session() as s:
        host_a = s.scalar(select(HostRow.id).where(HostRow.name == AGENT_HOST))
        s.execute(update(VolumeRow).where(VolumeRow.id == vol).values(
            host_id=host_a, want_instance_id=iid, attached_to=iid, device="vdd",
            state="in-use"))
    return vol


async def test_volumes_on_other_hosts_follow_those_on_the_down_host_stay(
        svc: Services, three: tuple[VolSide, VolSide, Host, str]) -> None:
    a, b, c, iid = three
    await _attached(a, c)
    (old,) = agents.assignments(svc, c.who, c.name).volumes
    assert old.export is not None
    scratch = _stored_on_a(svc, "scratch", iid)
    silent(svc, AGENT_HOST)

    out = host_evacuate.evacuate(svc, ADMIN, AGENT_HOST)

    (moved,) = out.moved
    note = ("boot disk recreated from image tiny; volumes data attached again; volumes "
            "scratch left detached (their storage host is down: attach them again once it "
            "is back)")
    assert (moved.instance, moved.destination, moved.volumes, moved.volumes_left,
            moved.note) == ("vm", B, ["data"], ["scratch"], note)  # not c: it stores data
    assert out.unmoved == []
    assert f"volumes stored on host {AGENT_HOST} stay there, detached" in out.note
    # data: exported to b now, under a new name and key (a's QEMU opens nothing any more)
    assert _client(svc) == B
    (on_b,) = b.volumes()
    (on_c,) = agents.assignments(svc, c.who, c.name).volumes
    assert on_c.export is not None and on_b.remote is not None and on_b.attach_to == iid
    assert (on_b.remote.name, on_b.remote.key) == (on_c.export.name, on_c.export.key)
    assert (on_c.export.name, on_c.export.key) != (old.export.name, old.export.key)
    assert on_c.export.port != old.export.port
    await c.step()
    assert c.exporter.exports[on_b.id][1].name == on_c.export.name  # restarted with it
    # b starts the instance (stopped: at its next start) with data attached over NBD
    await b.step()
    instances.act(svc, ADMIN, None, "vm", Action.START)
    (att,) = b.vrec.attachments_for(iid)
    assert (att.volume_id, att.source.name) == (on_b.id, on_c.export.name)  # type: ignore[union-attr]
    shown = {v.name: v for v in volumes.list_all(svc, ADMIN, None)}
    assert (shown["data"].state, shown["data"].attached_to) == ("in-use", "vm")
    # scratch: shown as it is (its host is down), no longer the instance's
    assert shown["scratch"].state == "error"
    assert "its storage host host-a is down" in shown["scratch"].state_reason
    assert scratch not in {v.id for v in b.volumes()}
    log = [(e.kind, e.detail) for e in instance_events.list_for(svc, ADMIN, None, "vm")]
    assert ("evacuated", f"{moved.migration} from {AGENT_HOST} to {B}: evacuated from a down "
                         f"host; {note}") in log

    # host-a is back: it discards its copy, lets go of scratch, reports nothing of data
    host_admin.set_disabled(svc, ADMIN, AGENT_HOST, False)
    for _ in range(2):
        await a.step()
    assert iid not in a.host.vms
    v = volumes.show(svc, ADMIN, None, "scratch")
    assert (v.state, v.attached_to) == ("available", None)
    assert _client(svc) == B and volumes.show(svc, ADMIN, None, "data").state == "in-use"


async def test_the_storage_host_when_nothing_else_fits_and_the_volume_turns_local(
        svc: Services, three: tuple[VolSide, VolSide, Host, str]) -> None:
    a, _b, c, iid = three
    await _attached(a, c)
    host_admin.set_disabled(svc, ADMIN, B, True)
    silent(svc, AGENT_HOST)

    (moved,) = host_evacuate.evacuate(svc, ADMIN, AGENT_HOST).moved

    assert (moved.destination, moved.volumes) == (C, ["data"])
    assert _host_of(svc, iid) == C and _client(svc) is None
    (on_c,) = agents.assignments(svc, c.who, c.name).volumes
    assert (on_c.attach_to, on_c.export, on_c.remote) == (iid, None, None)
    await c.step()
    assert c.exporter.exports == {}  # the old export is gone with its secrets
    assert volumes.show(svc, ADMIN, None, "data").state == "in-use"
