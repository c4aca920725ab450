"""Placement checks disk space (issue 17, item 9): hosts report their state dir's filesystem
when they register and when it changes; a create that a host has no disk room for is refused
with a one-line reason naming the room and the need."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from cumulo.services.auth import issue_token
from cumulo.services.context import Role, Services
from tests.conftest import AGENT_HOST

BASE = f"/v1/agent/hosts/{AGENT_HOST}"


def _agent(svc: Services) -> dict[str, str]:
    with svc.db.session() as s:
        return {"Authorization": f"Bearer {issue_token(s, Role.AGENT, host_name=AGENT_HOST)}"}


def _register(api: TestClient, agent: dict[str, str], disk: dict[str, int] | None) -> Any:
    return api.post("/v1/agent/hosts/register", headers=agent, json={
        "name": AGENT_HOST, "zone": "local-1a", "architectures": ["x86_64", "arm64"],
        "vcpus": 64, "ram_mib": 65536, "driver": "fake", "accel": "fake", "disk": disk})


def _create(api: TestClient, name: str) -> Any:
    return api.post("/v1/instances", json={"name": name, "image": "tiny", "type": "t1.nano"})


def _host(api: TestClient) -> dict[str, Any]:
    zone = next(z for z in api.get("/v1/zones").json() if z["name"] == "local-1a")
    host: dict[str, Any] = zone["hosts"][0]
    return host


def test_a_host_without_disk_room_is_not_chosen_and_the_error_says_why(
        api: TestClient, svc: Services) -> None:
    agent = _agent(svc)
    assert _register(api, agent, {"total_mib": 100_000, "free_mib": 0}).status_code == 200
    before = api.get("/v1/instances").json()
    r = _create(api, "a")
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "no_host_fits"
    # The tiny image is 1 GiB and t1.nano's disk 1 GiB (disk_allocation_ratio 1).
    assert r.json()["detail"] == (
        "no host fits: zone local-1a has 1 host: 1 lacks 2048 MiB disk (largest free: 0)")
    assert api.get("/v1/instances").json() == before  # refused: nothing written

    # The agent reports space freed: placement sees it at once.
    r = api.post(f"{BASE}/report", headers=agent,
                 json={"observations": [], "disk": {"total_mib": 100_000, "free_mib": 5_000}})
    assert r.status_code == 204, r.text
    assert (_host(api)["disk_free_mib"], _host(api)["disk_room_mib"]) == (5_000, 5_000)
    assert _create(api, "a").status_code == 202
    # Placed but not yet started: its claim is not in the reported free space yet, so it
    # counts against the room; a third instance does not fit any more.
    assert _host(api)["disk_room_mib"] == 5_000 - 2048
    assert _create(api, "b").status_code == 202
    r = _create(api, "c")
    assert r.status_code == 409
    assert "1 lacks 2048 MiB disk (largest free: 904)" in r.json()["detail"]


def test_claims_count_against_the_total_as_thin_disks_grow(api: TestClient,
                                                           svc: Services) -> None:
    agent = _agent(svc)
    _register(api, agent, {"total_mib": 5_000, "free_mib": 5_000})
    assert _create(api, "a").status_code == 202
    # The host started it (its overlay is thin: the free space barely moved) ...
    gen = api.get("/v1/instances/a").json()
    poll = api.post(f"{BASE}/assignments", headers=agent, json={}).json()
    (a,) = poll["instances"]
    r = api.post(f"{BASE}/report", headers=agent, json={
        "observations": [{"id": gen["id"], "state": "running", "generation": a["generation"]}],
        "disk": {"total_mib": 5_000, "free_mib": 4_990}})
    assert r.status_code == 204
    # ... but its disk may grow to its claim: 5000 - 2048 left, enough for one more only.
    assert _host(api)["disk_room_mib"] == 5_000 - 2048
    assert _create(api, "b").status_code == 202
    assert _create(api, "c").status_code == 409
    assert _host(api)["disk_room_mib"] == 5_000 - 2 * 2048


def test_the_allocation_ratio_overcommits_thin_disks(api: TestClient, svc: Services) -> None:
    svc.settings.disk_allocation_ratio = 4.0
    _register(api, _agent(svc), {"total_mib": 100_000, "free_mib": 1_300})
    r = _create(api, "a")  # 1024 (image) + 1024 / 4
    assert r.status_code == 202, r.text
    assert _host(api)["disk_room_mib"] == 1_300 - 1_280


def test_a_disk_report_that_does_not_hold_together_is_not_recorded(api: TestClient,
                                                                   svc: Services) -> None:
    agent = _agent(svc)
    for disk in ({"total_mib": 10, "free_mib": 11}, {"total_mib": -1, "free_mib": -2},
                 {"total_mib": 2**40, "free_mib": 0}):
        r = _register(api, agent, disk)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), disk
        # In a report, it is left out like any observation the API cannot use (a refused
        # report would be sent again, and refused again, forever).
        r = api.post(f"{BASE}/report", headers=agent, json={"observations": [], "disk": disk})
        assert r.status_code == 204, disk
    assert _host(api)["disk_free_mib"] is None  # nothing was recorded
