"""`host drain` with the fake driver on two fake hosts: the host is disabled, its running
instances leave it `drain_concurrency` at a time (the others queued, started as earlier ones
end), and what cannot move is said with why."""

from __future__ import annotations

from cumulo.domain.instance import Action
from cumulo.services import agents, host_admin, host_drain, instances, migrations
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.unit.services.test_migrations import B, Side, _host_of, _running, _start_vm, cloud

__all__ = ["cloud"]  # the fixture, shared


async def test_drain_moves_running_instances_a_few_at_a_time(
        svc: Services, cloud: tuple[Side, Side, str]) -> None:
    a, b, first = cloud
    svc.settings.drain_concurrency = 1
    second = _running(svc, a, "vm-2")
    stopped = _running(svc, a, "vm-3")
    instances.act(svc, ADMIN, None, "vm-3", Action.STOP)
    for iid in (first, second):
        await _start_vm(a, iid)

    drained = host_drain.drain(svc, ADMIN, AGENT_HOST)
    assert [(m.instance, m.state) for m in drained.migrations] == [
        ("vm", "preparing"), ("vm-2", "queued")]
    assert [(u.instance, "is stopping: a running instance moves live, a stopped one cold"
             in u.reason) for u in drained.unmoved] == [("vm-3", True)]
    assert agents.assignments(svc, a.who, a.name).migrations == []
    for _ in range(40):
        await b.step()
        await a.step()
        states = [m.state for m in migrations.list_all(svc, ADMIN)]
        if states == ["completed", "completed"]:
            break
        assert sum(s not in ("queued", "completed") for s in states) <= 1  # one at a time
    assert states == ["completed", "completed"]
    assert _host_of(svc, first) == _host_of(svc, second) == B
    assert _host_of(svc, stopped) == AGENT_HOST
    assert not a.host.vms  # nothing left running on the drained host
    host = host_admin.show(svc, ADMIN, AGENT_HOST)
    assert (host.state, host.disabled_reason) == ("disabled", "drained")
