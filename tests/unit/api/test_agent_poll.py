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
