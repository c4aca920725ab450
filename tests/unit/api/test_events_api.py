"""The event log through the API: a life told by the user's requests and the host's reports
(started, stopped by the guest, crashed with its reason, deleted), a host going silent, and
each project reading its own events only."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cumulo.api import app as app_module
from cumulo.api.app import create_app
from cumulo.services import hosts
from cumulo.services.context import Services
from tests.conftest import AGENT_HOST

REPORT = f"/v1/agent/hosts/{AGENT_HOST}/report"


def _member(api: TestClient, project: str) -> dict[str, str]:
    assert api.post("/v1/projects", json={"name": project}).status_code == 201
    return {"Authorization": f"Bearer {api.post(f'/v1/projects/{project}/tokens').json()['token']}"}


def _report(api: TestClient, vm_id: str, state: str, **more: Any) -> None:
    gen = more.pop("generation")
    seen = {"id": vm_id, "state": state, "generation": gen, **more}
    assert api.post(REPORT, json={"observations": [seen]}).status_code == 204


def _kinds(api: TestClient, headers: dict[str, str], **params: str) -> list[tuple[str, ...]]:
    r = api.get("/v1/events", headers=headers, params=params)
    assert r.status_code == 200, r.text
    return [(e["kind"], e["actor"], e["detail"]) for e in r.json()]


def test_an_instance_life_in_its_project_events(api: TestClient, svc: Services) -> None:
    member = _member(api, "p")
    other = _member(api, "q")
    vm = api.post("/v1/instances", headers=member,
                  json={"name": "web", "image": "tiny", "type": "t1.nano"}).json()
    _report(api, vm["id"], "running", generation=1)
    api.post("/v1/instances/web/stop", headers=member)
    _report(api, vm["id"], "stopped", generation=2)
    api.post("/v1/instances/web/start", headers=member)
    _report(api, vm["id"], "running", generation=3)
    _report(api, vm["id"], "stopped", generation=3, guest_initiated=True,
            reason="the guest powered itself off")
    api.post("/v1/instances/web/start", headers=member)
    _report(api, vm["id"], "error", generation=4,
            reason="qemu process exited unexpectedly (pid 42)")
    api.delete("/v1/instances/web", headers=member)
    _report(api, vm["id"], "deleted", generation=5)

    life = _kinds(api, member, resource="web")
    assert [k[:2] for k in life] == [
        ("created", "user"), ("started", "agent"),
        ("stop_requested", "user"), ("stopped", "user"),
        ("start_requested", "user"), ("started", "agent"),
        ("stopped", "guest"),
        ("start_requested", "user"), ("crashed", "agent"),
        ("delete_requested", "user"), ("deleted", "agent"),
    ]
    assert life[0][2] == "1 vCPUs, 128 MiB, image tiny, host host-a"
    assert life[6][2] == "the guest powered itself off"
    assert life[8][2] == "qemu process exited unexpectedly (pid 42)"
    # By id too; another project's member sees none of it, nor may it ask for p's.
    assert len(_kinds(api, member, resource=vm["id"])) == len(life)
    assert _kinds(api, other) == []
    r = api.get("/v1/events", headers=other, params={"project": "p"})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    # The admin reads any project's, or every event.
    assert len(_kinds(api, {}, project="p")) == len(life)
    first = api.get("/v1/events", params={"project": "p"}).json()[0]
    assert (first["project"], first["resource_type"], first["resource_id"]) == (
        "p", "instance", vm["id"])


def test_since_filters_by_time_or_age_and_bad_values_are_refused(api: TestClient) -> None:
    api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"})
    assert [k[0] for k in _kinds(api, {}, since="10m")] == ["created"]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert _kinds(api, {}, since=later) == []
    assert len(_kinds(api, {}, since="2020-01-01T00:00:00")) == 1
    for bad in ("yesterday", "10x", "-5m"):
        r = api.get("/v1/events", params={"since": bad})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_since"), bad
    r = api.get("/v1/events", params={"limit": 0})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_input")


def test_volume_attach_and_detach_are_told_by_the_host(api: TestClient) -> None:
    vm = api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"}).json()
    vol = api.post("/v1/volumes", json={"name": "data", "size_gib": 1}).json()

    def seen(state: str, generation: int, attached_to: str | None = None) -> None:
        obs = {"id": vol["id"], "state": state, "generation": generation,
               "attached_to": attached_to}
        assert api.post(REPORT, json={"observations": [], "volumes": [obs]}).status_code == 204

    seen("available", 1)
    api.post("/v1/volumes/data/attach", json={"instance": "a"})
    seen("in-use", 2, vm["id"])
    api.post("/v1/volumes/data/detach")
    seen("available", 3)
    assert [k[0] for k in _kinds(api, {}, resource="data")] == [
        "created", "attach_requested", "attached", "detach_requested", "detached"]


def test_a_silent_host_is_marked_down_in_its_instances_events(
        svc: Services, admin_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "SWEEP_EVERY_S", 0.1)
    with TestClient(create_app(svc)) as api:
        api.headers["Authorization"] = f"Bearer {admin_token}"
        member = _member(api, "p")
        r = api.post("/v1/instances", headers=member,
                     json={"name": "web", "image": "tiny", "type": "t1.nano"})
        assert r.status_code == 202, r.text
        vm = r.json()
        # Placed while its host was up; now the host's silence counts after half a second.
        monkeypatch.setattr(hosts, "HOST_DOWN_AFTER", timedelta(seconds=0.5))
        deadline = time.monotonic() + 20
        while not _kinds(api, member)[1:] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [k[:2] for k in _kinds(api, member)] == [
            ("created", "user"), ("host_down", "system")]
        host_events = [e for e in api.get("/v1/events").json() if e["resource_type"] == "host"]
        assert [(e["resource_name"], e["kind"], e["project"]) for e in host_events] == [
            (AGENT_HOST, "down", None)]
        assert api.get("/v1/zones").json()[0]["hosts"][0]["state"] == "down"
        # Its agent is heard from again: the host is up, and said so.
        svc.notifier.heartbeats.clear()
        api.post(REPORT, json={"observations": []})
        kinds = [e["kind"] for e in api.get("/v1/events").json()
                 if e["resource_type"] == "host"]
        assert kinds[:2] == ["down", "up"]  # (down again later: no more beats come)
        assert [k[0] for k in _kinds(api, member, resource=vm["id"])][:3] == [
            "created", "host_down", "host_up"]


def test_a_deleted_project_takes_its_events_along(api: TestClient) -> None:
    member = _member(api, "gone")
    api.post("/v1/networks", headers=member, json={"name": "n", "cidr": "10.200.0.0/24"})
    assert [k[0] for k in _kinds(api, {}, project="gone")] == ["created"]
    assert api.delete("/v1/projects/gone").status_code == 204
    assert all(e["resource_name"] != "n" for e in api.get("/v1/events").json())
