"""Quotas through the API: limits beside usage, refusals that say which limit and by how much
(and change nothing), admins only set them, and concurrent creates never overshoot."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cumulo.services import hosts
from cumulo.services.context import Services
from tests.conftest import ADMIN


@pytest.fixture(autouse=True)
def _hosts_stay_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hosts below are registered once and never heartbeat: on a loaded machine a test
    outlived their 12 s (a create or a snapshot then refused for a host down, not a quota)."""
    monkeypatch.setattr(hosts, "HOST_DOWN_AFTER", timedelta(hours=1))


def _project(api: TestClient, name: str) -> dict[str, str]:
    """A project and the headers of a member token of it."""
    assert api.post("/v1/projects", json={"name": name}).status_code == 201
    token = api.post(f"/v1/projects/{name}/tokens").json()["token"]
    return {"Authorization": f"Bearer {token}"}


def _set(api: TestClient, project: str, **limits: Any) -> Any:
    r = api.patch(f"/v1/projects/{project}/quotas", json={"limits": limits})
    assert r.status_code == 200, r.text
    return r.json()


def _lines(view: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    return {q["resource"]: (q["used"], q["limit"]) for q in view["quotas"]}


def _big_hosts(svc: Services) -> None:
    """Room for far more than any quota below, in both zones."""
    for name, zone in (("big-a", "local-1a"), ("big-b", "local-1b")):
        hosts.register(svc, ADMIN, name=name, zone=zone, architectures=["x86_64"], vcpus=64,
                       ram_mib=65536, driver="fake", accel="fake", agent_url="")


def test_the_ninth_vcpu_is_refused_saying_which_limit_and_nothing_changes(
        api: TestClient, svc: Services) -> None:
    _big_hosts(svc)
    member = _project(api, "b")
    _set(api, "b", vcpus=8)
    for i in range(8):
        r = api.post("/v1/instances", headers=member,
                     json={"name": f"vm{i}", "image": "tiny", "type": "t1.nano"})
        assert r.status_code == 202, r.text
    r = api.post("/v1/instances", headers=member,
                 json={"name": "vm8", "image": "tiny", "type": "t1.nano"})
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert (r.json()["code"], r.json()["detail"]) == (
        "quota_exceeded", "project 'b' would use 9 of 8 vCPUs")
    assert len(api.get("/v1/instances", headers=member).json()) == 8
    # The member reads the limits beside the usage, and the refusal in the project's events.
    view = api.get("/v1/quotas", headers=member).json()
    assert view["project"] == "b"
    lines = _lines(view)
    assert lines["vcpus"] == (8, 8) and lines["instances"] == (8, 100)
    assert lines["ram_mib"] == (8 * 128, 262144)
    refused = [e for e in api.get("/v1/events", headers=member).json()
               if e["kind"] == "quota_refused"]
    assert [(e["resource_name"], e["detail"]) for e in refused] == [
        ("vm8", "project 'b' would use 9 of 8 vCPUs")]
    # Deleting one frees its vCPU (an instance being deleted no longer counts).
    assert api.delete("/v1/instances/vm0", headers=member).status_code == 202
    assert api.post("/v1/instances", headers=member,
                    json={"name": "vm8", "image": "tiny", "type": "t1.nano"}).status_code == 202


def test_each_kind_of_limit_refuses_what_would_pass_it(api: TestClient, svc: Services) -> None:
    _big_hosts(svc)
    member = _project(api, "c")
    _set(api, "c", instances=1, ram_mib=200, volume_gib=3, public_ips=1, networks=1,
         snapshots=1)

    def post(path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        r = api.post(path, headers=member, json=body or {})
        return r.status_code, r.json().get("detail", "") if r.status_code >= 400 else ""

    assert post("/v1/instances", {"name": "big", "image": "tiny", "type": "t1.micro"}) == (
        403, "project 'c' would use 256 of 200 MiB of RAM")
    assert post("/v1/instances", {"name": "a", "image": "tiny", "type": "t1.nano"})[0] == 202
    assert post("/v1/instances", {"name": "b", "image": "tiny", "type": "t1.nano"}) == (
        403, "project 'c' would use 2 of 1 instances")
    assert post("/v1/volumes", {"name": "v1", "size_gib": 2})[0] == 202
    assert post("/v1/volumes", {"name": "v2", "size_gib": 2}) == (
        403, "project 'c' would use 4 of 3 GiB of volumes")
    vol = api.get("/v1/volumes/v1", headers=member).json()
    seen = {"id": vol["id"], "state": "available", "generation": 1}
    assert api.post("/v1/agent/hosts/big-a/report",  # its host says it exists now
                    json={"observations": [], "volumes": [seen]}).status_code == 204
    r = api.post("/v1/volumes/v1/resize", headers=member, json={"size_gib": 4})
    assert (r.status_code, r.json()["detail"]) == (
        403, "project 'c' would use 4 of 3 GiB of volumes")
    assert post("/v1/volumes/v1/snapshots", {"name": "s1"})[0] == 202
    assert post("/v1/volumes/v1/snapshots", {"name": "s2"}) == (
        403, "project 'c' would use 2 of 1 snapshots")
    assert post("/v1/public-ips")[0] == 201
    assert post("/v1/public-ips") == (403, "project 'c' would use 2 of 1 public IPs")
    assert post("/v1/networks", {"name": "n1", "cidr": "10.200.0.0/24"})[0] == 201
    assert post("/v1/networks", {"name": "n2", "cidr": "10.201.0.0/24"}) == (
        403, "project 'c' would use 2 of 1 networks")
    # Nothing of what was refused exists; the instance's own public IP and the default
    # network it was put on do not count against those limits.
    assert [v["name"] for v in api.get("/v1/volumes", headers=member).json()] == ["v1"]
    assert api.get("/v1/volumes/v1", headers=member).json()["size_gib"] == 2
    assert len(api.get("/v1/public-ips", headers=member).json()) == 2
    lines = _lines(api.get("/v1/quotas", headers=member).json())
    assert lines["public_ips"] == (1, 1) and lines["networks"] == (1, 1)
    assert lines["volume_gib"] == (2, 3)
    kinds = [e["resource_type"] for e in api.get("/v1/events", headers=member).json()
             if e["kind"] == "quota_refused"]
    assert kinds == ["instance", "instance", "volume", "volume", "snapshot", "public_ip",
                     "network"]


def test_only_admins_set_limits_and_bad_ones_change_nothing(api: TestClient,
                                                           svc: Services) -> None:
    member = _project(api, "d")
    r = api.patch("/v1/projects/d/quotas", headers=member, json={"limits": {"vcpus": 100}})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    for bad in ({"vcpu": 3}, {"vcpus": -1}, {"vcpus": "many"}, {"vcpus": 2**31}, {}):
        r = api.patch("/v1/projects/d/quotas", json={"limits": bad})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_quota"), (bad, r.text)
    r = api.patch("/v1/projects/nope/quotas", json={"limits": {"vcpus": 1}})
    assert (r.status_code, r.json()["code"]) == (404, "unknown_project")
    assert all(q["default"] for q in api.get("/v1/projects/d/quotas").json()["quotas"])
    view = _set(api, "d", vcpus="unlimited", snapshots=0)
    assert _lines(view)["vcpus"] == (0, None) and _lines(view)["snapshots"] == (0, 0)
    view = _set(api, "d", vcpus="default")
    line = next(q for q in view["quotas"] if q["resource"] == "vcpus")
    assert (line["limit"], line["default"]) == (200, True)
    # A member reads its own project's limits only.
    r = api.get("/v1/quotas", headers=member, params={"project": "default"})
    assert r.status_code == 403
    changed = [e["detail"] for e in api.get("/v1/events", params={"project": "d"}).json()
               if e["kind"] == "quota_changed"]
    assert changed == ["vcpus=unlimited, snapshots=0", "vcpus=default"]


def test_twenty_concurrent_creates_never_overshoot(api: TestClient, svc: Services) -> None:
    """Through the API (its create batches) and in both zones at once: the project's lock,
    not a zone's, keeps the count."""
    _big_hosts(svc)
    _project(api, "e")
    _set(api, "e", instances=7, volume_gib=5)

    def create(i: int) -> int:
        zone = "local-1a" if i % 2 else "local-1b"
        status: int = api.post("/v1/instances", params={"project": "e"}, json={
            "name": f"vm{i}", "image": "tiny", "type": "t1.nano", "zone": zone}).status_code
        return status

    def volume(i: int) -> int:
        zone = "local-1a" if i % 2 else "local-1b"
        status: int = api.post("/v1/volumes", params={"project": "e"}, json={
            "name": f"v{i}", "size_gib": 1, "zone": zone}).status_code
        return status

    with ThreadPoolExecutor(20) as pool:
        created = list(pool.map(create, range(20)))
        volumes = list(pool.map(volume, range(20)))
    assert sorted(created) == [202] * 7 + [403] * 13
    assert sorted(volumes) == [202] * 5 + [403] * 15
    assert len(api.get("/v1/instances", params={"project": "e"}).json()) == 7
    assert len(api.get("/v1/volumes", params={"project": "e"}).json()) == 5


def test_a_checked_create_names_the_quota_it_would_pass(api: TestClient) -> None:
    """POST /v1/instances/validate (the console's form) reads the project's own limits."""
    _project(api, "f")
    _set(api, "f", vcpus=0)
    r = api.post("/v1/instances/validate", params={"project": "f"},
                 json={"name": "web", "image": "tiny", "type": "t1.nano"})
    assert (r.status_code, r.json()["detail"]) == (403, "project 'f' would use 1 of 0 vCPUs")
    assert api.get("/v1/events", params={"project": "f"}).json()[-1]["kind"] == "quota_changed"
