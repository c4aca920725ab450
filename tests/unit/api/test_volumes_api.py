"""Volumes and snapshots through the API, with the agent's reports played by hand."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from cumulo.protocol import SnapshotObservation, VolumeObservation
from cumulo.services import agents
from cumulo.services.context import Principal, Role, Services
from tests.conftest import AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)


def vol(api: TestClient, name: str = "data", **over: Any) -> dict[str, Any]:
    r = api.post("/v1/volumes", json={"name": name, "size_gib": 1} | over)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def inst(api: TestClient, name: str = "vm") -> dict[str, Any]:
    r = api.post("/v1/instances", json={"name": name, "image": "tiny", "type": "t1.nano"})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def report_vol(svc: Services, vid: str, state: str, attached: str | None = None) -> None:
    gen = next(v.generation for v in agents.assignments(svc, AGENT, AGENT_HOST).volumes
               if v.id == vid)
    agents.report(svc, AGENT, AGENT_HOST, [], [VolumeObservation(
        id=vid, state=state, attached_to=attached, generation=gen)], [])


def test_volume_lifecycle(api: TestClient, svc: Services) -> None:
    v = vol(api, type="fast")
    assert (v["state"], v["size_gib"], v["iops"], v["mbps"]) == ("creating", 1, 5000, 250)
    (a,) = agents.assignments(svc, AGENT, AGENT_HOST).volumes
    assert (a.id, a.desired, a.attach_to, a.iops) == (v["id"], "present", None, 5000)
    report_vol(svc, v["id"], "available")
    i = inst(api)
    r = api.post("/v1/volumes/data/attach", json={"instance": "vm"})
    assert r.status_code == 202 and r.json()["state"] == "attaching"
    assert r.json()["device"] == "vdc" and r.json()["attached_to"] == "vm"
    (a,) = agents.assignments(svc, AGENT, AGENT_HOST).volumes
    assert a.attach_to == i["id"]
    report_vol(svc, v["id"], "in-use", i["id"])
    assert api.get("/v1/volumes/data").json()["state"] == "in-use"
    assert api.post("/v1/volumes/data/attach", json={"instance": "vm"}).json()["code"] \
        == "volume_in_use"
    assert api.delete("/v1/volumes/data").json()["code"] == "volume_in_use"
    r = api.post("/v1/volumes/data/resize", json={"size_gib": 3})
    assert r.status_code == 202 and r.json()["size_gib"] == 3
    assert api.post("/v1/volumes/data/resize", json={"size_gib": 2}).json()["code"] \
        == "invalid_size"
    s = api.post("/v1/volumes/data/snapshots", json={"name": "s1"})
    assert s.status_code == 202 and s.json()["state"] == "creating"
    (sa,) = agents.assignments(svc, AGENT, AGENT_HOST).snapshots
    agents.report(svc, AGENT, AGENT_HOST, [], [], [SnapshotObservation(
        id=sa.id, state="available", size_gib=3)])
    assert api.get("/v1/snapshots").json()[0]["state"] == "available"
    r = api.post("/v1/volumes", json={"name": "copy", "size_gib": 2, "from_snapshot": "s1"})
    assert r.json()["code"] == "invalid_size"  # smaller than the snapshot
    copy = vol(api, "copy", size_gib=3, from_snapshot="s1")
    assert copy["source_snapshot"] == "s1"
    assert api.post("/v1/volumes/data/detach").json()["state"] == "detaching"
    report_vol(svc, v["id"], "available")
    assert api.get("/v1/volumes/data").json()["attached_to"] is None
    assert api.delete("/v1/volumes/data").json()["state"] == "deleting"
    report_vol(svc, v["id"], "deleted")
    assert [x["name"] for x in api.get("/v1/volumes").json()] == ["copy"]


def test_bad_volume_input_changes_nothing(api: TestClient, svc: Services) -> None:
    vol(api, "taken")
    cases: list[tuple[dict[str, object], str]] = [
        ({"size_gib": 0}, "invalid_size"), ({"size_gib": -1}, "invalid_size"),
        ({"size_gib": 10**6}, "invalid_size"), ({"type": "gold"}, "unknown_volume_type"),
        ({"zone": "nowhere"}, "unknown_zone"), ({"name": "Bad Name"}, "invalid_name"),
        ({"name": "taken"}, "name_taken"), ({"from_snapshot": "ghost"}, "unknown_snapshot"),
        ({"zone": "local-1b"}, "insufficient_capacity")]
    for over, code in cases:
        r = api.post("/v1/volumes", json={"name": "v", "size_gib": 1} | over)
        assert r.json()["code"] == code, (over, r.text)
    assert [v["name"] for v in api.get("/v1/volumes").json()] == ["taken"]
    assert api.post("/v1/volumes/ghost/attach", json={"instance": "x"}).json()["code"] \
        == "unknown_volume"
    assert api.post("/v1/volumes/taken/detach").json()["code"] == "not_attached"
    assert api.post("/v1/volumes/taken/attach", json={"instance": "x"}).json()["code"] \
        == "unknown_instance"
    # still creating: cannot attach yet
    inst(api)
    assert api.post("/v1/volumes/taken/attach", json={"instance": "vm"}).json()["code"] \
        == "invalid_state"


def test_instance_delete_detaches_or_deletes_its_volumes(api: TestClient, svc: Services) -> None:
    keep, gone = vol(api, "keep"), vol(api, "gone", delete_on_termination=True)
    for v in (keep, gone):
        report_vol(svc, v["id"], "available")
    i = inst(api)
    for name in ("keep", "gone"):
        api.post(f"/v1/volumes/{name}/attach", json={"instance": "vm"})
    devices = sorted(v["device"] for v in api.get("/v1/volumes").json())
    assert devices == ["vdc", "vdd"]
    api.delete(f"/v1/instances/{i['id']}")
    by_name = {v["name"]: v for v in api.get("/v1/volumes").json()}
    assert by_name["keep"]["state"] == "detaching" and by_name["keep"]["attached_to"] is None
    assert by_name["gone"]["state"] == "deleting"
    wanted = {a.id: a for a in agents.assignments(svc, AGENT, AGENT_HOST).volumes}
    assert wanted[keep["id"]].attach_to is None and wanted[gone["id"]].desired == "deleted"
