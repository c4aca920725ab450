"""The agents' long-poll with a report riding on it (POST .../assignments): the report is
applied before the poll is answered, so a change costs a host one request, not two."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from cumulo.services.auth import issue_token
from cumulo.services.context import Role, Services
from tests.conftest import AGENT_HOST

POLL = f"/v1/agent/hosts/{AGENT_HOST}/assignments"


def _agent(api: TestClient, svc: Services) -> dict[str, str]:
    with svc.db.session() as s:
        return {"Authorization": f"Bearer {issue_token(s, Role.AGENT, host_name=AGENT_HOST)}"}


def _poll(api: TestClient, agent: dict[str, str], **body: Any) -> dict[str, Any]:
    r = api.post(POLL, json=body, headers=agent)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_a_report_on_the_poll_is_applied_before_the_answer(api: TestClient,
                                                           svc: Services) -> None:
    agent = _agent(api, svc)
    vm = api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"}).json()
    first = _poll(api, agent)
    (assigned,) = first["instances"]
    assert (assigned["id"], assigned["state"]) == (vm["id"], "pending")
    seen = {"id": vm["id"], "state": "running", "generation": assigned["generation"]}
    answer = _poll(api, agent, since=first["version"], have=first["view"],
                   report={"observations": [seen]})
    assert api.get(f"/v1/instances/{vm['id']}").json()["state"] == "running"
    # Reported running needs no new decision: the poll is answered without a wake-up, with
    # the instance's new state as a change to the list the host holds.
    assert answer["version"] == first["version"]
    assert [(i["id"], i["state"]) for i in answer["instances"]] == [(vm["id"], "running")]
    assert answer["instances_since"] == first["view"]


def test_a_report_that_asks_for_a_new_decision_wakes_its_own_poll(api: TestClient,
                                                                  svc: Services) -> None:
    agent = _agent(api, svc)
    vm = api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"}).json()
    first = _poll(api, agent)
    gen = first["instances"][0]["generation"]
    crashed = {"id": vm["id"], "state": "error", "reason": "qemu exited", "generation": gen}
    # Waiting up to 20 s, unless something changed: the report (applied first) is a change.
    answer = _poll(api, agent, since=first["version"], wait=20,
                   report={"observations": [crashed]})
    assert answer["version"] == first["version"] + 1
    assert [i["state"] for i in answer["instances"]] == ["error"]


def test_a_bad_poll_changes_nothing(api: TestClient, svc: Services) -> None:
    agent = _agent(api, svc)
    vm = api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"}).json()
    gen = _poll(api, agent)["instances"][0]["generation"]
    seen = {"id": vm["id"], "state": "running", "generation": gen}
    for bad in ({"wait": -1, "report": {"observations": [seen]}},
                {"have": "x" * 65, "report": {"observations": [seen]}},
                {"report": {"observations": [{"id": vm["id"], "state": "running"}]}}):
        r = api.post(POLL, json=bad, headers=agent)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), r.text
    assert api.get(f"/v1/instances/{vm['id']}").json()["state"] == "pending"
    # Another host's token may not report for this one.
    with svc.db.session() as s:
        other = issue_token(s, Role.AGENT, host_name="host-b")
    r = api.post(POLL, json={"report": {"observations": [seen]}},
                 headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403, r.text
    assert api.get(f"/v1/instances/{vm['id']}").json()["state"] == "pending"


def test_a_report_is_applied_but_what_this_api_cannot_use(api: TestClient,
                                                          svc: Services) -> None:
    # A state an agent of a newer version knows (or a broken agent's text) failed the whole
    # report with a 500, and the agent sends its whole report again after a failed request:
    # the host could never report anything again.
    agent = _agent(api, svc)
    a = api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"}).json()
    b = api.post("/v1/instances", json={"name": "b", "image": "tiny", "type": "t1.nano"}).json()
    gen = {i["id"]: i["generation"] for i in _poll(api, agent)["instances"]}
    long_and_odd = "qemu: \x1b[2J\nline two\x00" + "x" * 10_000
    report = {
        "observations": [
            {"id": a["id"], "state": "migrating", "generation": gen[a["id"]]},
            {"id": "i-\x00", "state": "running", "generation": 1},
            {"id": b["id"], "state": "error", "reason": long_and_odd,
             "generation": gen[b["id"]]},
        ],
        "volumes": [{"id": "vol-0123456789abcdef0", "state": "melted", "generation": 1},
                    {"id": "vol-0123456789abcdef0", "state": "available", "generation": 1,
                     "size_gib": 2**40},
                    {"id": "vol-0123456789abcdef0", "state": "in-use", "generation": 1,
                     "attached_to": "../x"}],
        "snapshots": [{"id": "snap\x00", "state": "available"}],
    }
    answer = _poll(api, agent, report=report)
    assert [i["state"] for i in answer["instances"] if i["id"] == a["id"]] == ["pending"]
    shown = api.get(f"/v1/instances/{b['id']}").json()
    assert shown["state"] == "error"
    # Shown to users as it is: one line, no escape sequence acted on, not 10 kB.
    reason = shown["state_reason"]
    assert reason.startswith("qemu: \\x1b[2J\\nline two\\x00xxx") and len(reason) <= 500
    assert api.get(f"/v1/instances/{a['id']}").json()["state"] == "pending"


def test_a_registration_says_only_what_the_columns_hold(api: TestClient,
                                                        svc: Services) -> None:
    agent = _agent(api, svc)
    good = {"name": AGENT_HOST, "zone": "local-1a", "architectures": ["amd64", "arm64"],
            "vcpus": 4, "ram_mib": 4096, "driver": "qemu", "accel": "tcg",
            "agent_url": "unix:/run/cumulo/agent.sock"}
    bad: tuple[dict[str, object], ...] = (
        {"architectures": ["sparc"]}, {"architectures": []},
        {"driver": "qemu\x1b[2J"}, {"driver": "q" * 17}, {"accel": "turbo-max"},
        {"agent_url": "file:///etc/passwd"}, {"agent_url": "http://a b"},
        {"agent_url": "http://" + "a" * 300})
    for over in bad:
        r = api.post("/v1/agent/hosts/register", json=good | over, headers=agent)
        assert r.status_code == 400, (over, r.text)
        assert r.json()["code"] in ("invalid_input", "unknown_arch"), r.text
    zone = next(z for z in api.get("/v1/zones").json() if z["name"] == "local-1a")
    assert zone["hosts"][0]["accel"] == "fake"  # as the fixture registered it: unchanged
    r = api.post("/v1/agent/hosts/register", json=good, headers=agent)
    assert r.status_code == 200, r.text
    host = next(z for z in api.get("/v1/zones").json() if z["name"] == "local-1a")["hosts"][0]
    assert (host["accel"], host["architectures"]) == ("tcg", ["arm64", "x86_64"])
