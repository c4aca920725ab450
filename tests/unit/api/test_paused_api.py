"""A paused instance at the API (issue 17, item 8): the agent's report is shown as it is
(state `paused`, the cause as its reason), reboot and stop are accepted, start is refused
with a reason; a volume shows its type's write-error policy."""

from __future__ import annotations

from fastapi.testclient import TestClient

from cumulo.protocol import Observation
from cumulo.services import agents
from cumulo.services.context import Principal, Role, Services
from tests.conftest import AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
REASON = "host disk full (I/O error on vol-0123456789abcdef0); resumes when space is freed"


def _paused(api: TestClient, svc: Services) -> str:
    vm = api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"})
    iid: str = vm.json()["id"]
    gen = next(a.generation for a in agents.assignments(svc, AGENT, AGENT_HOST).instances)
    agents.report(svc, AGENT, AGENT_HOST,
                  [Observation(id=iid, state="paused", reason=REASON, generation=gen)])
    return iid


def test_a_paused_instance_says_so_and_why(api: TestClient, svc: Services) -> None:
    iid = _paused(api, svc)
    shown = api.get(f"/v1/instances/{iid}").json()
    assert (shown["state"], shown["state_reason"]) == ("paused", REASON)
    r = api.post(f"/v1/instances/{iid}/start")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    assert "paused by the hypervisor and resumes by itself" in r.json()["detail"]
    r = api.post(f"/v1/instances/{iid}/reboot")
    assert (r.status_code, r.json()["state"]) == (202, "rebooting")


def test_a_paused_instance_can_be_stopped(api: TestClient, svc: Services) -> None:
    iid = _paused(api, svc)
    r = api.post(f"/v1/instances/{iid}/stop")
    assert (r.status_code, r.json()["state"], r.json()["desired_state"]) == (
        202, "stopping", "stopped")


def test_volumes_show_their_types_write_error_policy(api: TestClient, svc: Services) -> None:
    svc.settings.volume_types[1].write_error = "report"
    std = api.post("/v1/volumes", json={"name": "s", "size_gib": 1}).json()
    fast = api.post("/v1/volumes", json={"name": "f", "size_gib": 1, "type": "fast"}).json()
    assert (std["write_error"], fast["write_error"]) == ("stop", "report")
    vols = {v.id: v.write_error for v in agents.assignments(svc, AGENT, AGENT_HOST).volumes}
    assert vols == {std["id"]: "stop", fast["id"]: "report"}
