"""What agents report moves instances; stale reports cannot undo a newer user request."""

from __future__ import annotations

import time

import pytest

from cumulo.db.tables import InstanceRow
from cumulo.domain.errors import Forbidden
from cumulo.domain.instance import Action
from cumulo.protocol import Observation
from cumulo.services import agent_views, agents, instances
from cumulo.services.context import Principal, Role, Services
from cumulo.services.notifier import CHANGE_LOG, Notifier
from tests.conftest import ADMIN, AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)


def _new(svc: Services, name: str = "vm") -> str:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano")
    return instances.create(svc, ADMIN, None, req).id


def _report(svc: Services, iid: str, state: str, gen: int, **kw: object) -> None:
    agents.report(svc, AGENT, AGENT_HOST,
                  [Observation(id=iid, state=state, generation=gen, **kw)])  # type: ignore[arg-type]


def test_assignments_carry_desired_state(svc: Services) -> None:
    iid = _new(svc)
    d = agents.assignments(svc, AGENT, AGENT_HOST)
    (a,), nets = d.instances, d.networks
    assert [n.id for n in nets] == [a.nics[0].network_id]
    assert (a.id, a.desired_power, a.generation, a.state) == (iid, "running", 1, "pending")
    # The image by id and content (the test image's files are empty): no path of the
    # API's machine crosses the wire.
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert a.image.id.startswith("img-") and a.image.kernel is not None
    assert (a.image.kernel.sha256, a.image.kernel.size, a.image.disk.sha256) == (empty, 0, empty)
    assert "path" not in a.image.model_dump_json()


def test_report_moves_state_and_stale_reports_are_ignored(svc: Services) -> None:
    iid = _new(svc)
    _report(svc, iid, "running", 1)
    assert instances.get(svc, ADMIN, None, iid).state == "running"
    instances.act(svc, ADMIN, None, iid, Action.STOP)  # generation 2
    _report(svc, iid, "running", 1)  # made before the agent saw the stop
    assert instances.get(svc, ADMIN, None, iid).state == "stopping"
    _report(svc, iid, "stopped", 2)
    assert instances.get(svc, ADMIN, None, iid).state == "stopped"


def test_crash_shows_error_with_reason_and_guest_poweroff_sets_desired_stopped(
    svc: Services,
) -> None:
    iid = _new(svc)
    _report(svc, iid, "error", 1, reason="qemu process exited unexpectedly")
    v = instances.get(svc, ADMIN, None, iid)
    assert (v.state, v.state_reason) == ("error", "qemu process exited unexpectedly")
    other = _new(svc, "other")
    _report(svc, other, "stopped", 1, guest_initiated=True, reason="the guest powered itself off")
    v = instances.get(svc, ADMIN, None, other)
    assert (v.state, v.desired_state) == ("stopped", "stopped")


def test_reboot_is_rebooting_until_the_agent_has_done_it(svc: Services) -> None:
    iid = _new(svc)
    _report(svc, iid, "running", 1)
    instances.act(svc, ADMIN, None, iid, Action.REBOOT)
    _report(svc, iid, "running", 2)  # not yet done
    assert instances.get(svc, ADMIN, None, iid).state == "rebooting"
    _report(svc, iid, "running", 2, reboot_done_seq=1)
    assert instances.get(svc, ADMIN, None, iid).state == "running"


def test_deleted_report_removes_the_row_only_when_deletion_was_asked(svc: Services) -> None:
    iid = _new(svc)
    _report(svc, iid, "deleted", 1)
    assert instances.get(svc, ADMIN, None, iid).state == "pending"
    instances.act(svc, ADMIN, None, iid, Action.DELETE)
    _report(svc, iid, "stopped", 2)
    assert instances.get(svc, ADMIN, None, iid).state == "deleting"
    _report(svc, iid, "deleted", 2)
    assert instances.list_all(svc, ADMIN, None) == []


def test_an_agent_acts_only_for_its_own_host(svc: Services) -> None:
    _new(svc)
    with pytest.raises(Forbidden):
        agents.assignments(svc, Principal(role=Role.AGENT, host_name="other"), AGENT_HOST)
    with pytest.raises(Forbidden):
        instances.list_all(svc, AGENT, None)


def _states(svc: Services) -> dict[str, str]:
    return {a.id: a.state for a in agents.assignments(svc, AGENT, AGENT_HOST).instances}


def test_a_dns_only_wake_up_reuses_the_host_view_and_a_report_outdates_it(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    iid = _new(svc)
    assert _states(svc) == {iid: "pending"}
    builds: list[str] = []
    build = agent_views.build_view

    def counting(*args: object) -> object:
        builds.append("built")
        return build(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(agent_views, "build_view", counting)
    hid = agents.host_id(svc, AGENT, AGENT_HOST)
    version = svc.notifier.version(hid)
    svc.notifier._wake(hid, content=False)  # what a coalesced DNS change does
    assert svc.notifier.version(hid) == version + 1
    assert _states(svc) == {iid: "pending"} and builds == []
    # pending -> running wakes nobody, but the next answer must show it
    _report(svc, iid, "running", 1)
    assert svc.notifier.version(hid) == version + 1
    assert _states(svc) == {iid: "running"} and builds == ["built"]
    # a create on this host (notify) outdates it too
    other = _new(svc, "vm2")
    assert _states(svc) == {iid: "running", other: "pending"} and len(builds) == 2


def test_a_write_that_announced_nothing_reaches_the_host_within_the_max_age(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    iid = _new(svc)
    assert _states(svc) == {iid: "pending"}
    with svc.db.session() as s:  # behind the notifier's back
        row = s.get(InstanceRow, iid)
        assert row is not None
        row.state = "running"
    assert _states(svc) == {iid: "pending"}  # the cached view, as designed
    later = time.monotonic() + agent_views.VIEW_MAX_AGE_S * agent_views.VIEW_MIN_AGE_SHARE - 0.5
    monkeypatch.setattr("cumulo.services.agent_views.time.monotonic", lambda: later)
    assert _states(svc) == {iid: "pending"}  # not before its earliest rebuild
    later += agent_views.VIEW_MAX_AGE_S
    assert _states(svc) == {iid: "running"}


def test_a_change_announced_for_some_instances_reads_only_those_again(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = _new(svc, "a"), _new(svc, "b"), _new(svc, "c")
    assert list(_states(svc)) == [a, b, c]
    reads: list[set[str] | None] = []
    read = agent_views.assigned

    def recording(s: object, svc_: Services, host: str, only: set[str] | None) -> object:
        reads.append(None if only is None else set(only))
        return read(s, svc_, host, only)  # type: ignore[arg-type]

    monkeypatch.setattr(agent_views, "assigned", recording)
    _report(svc, b, "running", 1)
    assert _states(svc) == {a: "pending", b: "running", c: "pending"} and reads == [{b}]
    d = _new(svc, "d")
    instances.act(svc, ADMIN, None, a, Action.DELETE)
    _report(svc, a, "deleted", 2)
    got = agents.assignments(svc, AGENT, AGENT_HOST).instances
    assert [i.id for i in got] == [b, c, d] and reads[1:] == [{d, a}]
    # what the pieces add up to is what a whole read gives
    hid = agents.host_id(svc, AGENT, AGENT_HOST)
    with svc.db.session() as s:
        assert got == read(s, svc, hid, None)
    svc.notifier.notify(hid)  # a change that names no instance (a volume, a rule)
    agents.assignments(svc, AGENT, AGENT_HOST)
    assert reads[-1] is None


def test_the_notifier_names_the_changed_instances_while_its_log_reaches_back() -> None:
    n = Notifier()
    assert n.changes("h", 0) == (0, set())
    n.notify("h", ["i-1"])
    n.touch("h", ["i-2"])
    assert n.changes("h", 0) == (2, {"i-1", "i-2"}) and n.changes("h", 1) == (2, {"i-2"})
    n.touch("h")
    assert n.changes("h", 1) == (3, None)  # something else changed too
    for i in range(CHANGE_LOG):
        n.touch("h", [f"i-{i}"])
    assert n.changes("h", 3) == (3 + CHANGE_LOG, {f"i-{i}" for i in range(CHANGE_LOG)})
    n.touch("h", ["x"])
    assert n.changes("h", 3) == (4 + CHANGE_LOG, None)  # the log no longer reaches back
    assert n.changes("h", 99_999) == (4 + CHANGE_LOG, None)  # another process's version
