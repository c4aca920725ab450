"""Placement groups through the REST API: spread keeps instances apart and says why it cannot,
cluster keeps them together; groups are a project's own."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from cumulo.services.context import Services
from tests.unit.api.test_hosts_api import member, register


def create(api: TestClient, name: str, **over: Any) -> Any:
    return api.post("/v1/instances", json={"name": name, "image": "tiny", "type": "t1.nano"}
                    | over)


def test_spread_puts_each_instance_on_another_host_and_refuses_with_the_count(
        api: TestClient, svc: Services) -> None:
    register(svc, "hv-2")
    register(svc, "hv-3", "local-1b")  # another zone: not a candidate
    r = api.post("/v1/placement-groups", json={"name": "web", "strategy": "spread"})
    assert r.status_code == 201 and r.json()["strategy"] == "spread"
    placed = [create(api, f"web-{i}", placement_group="web").json() for i in range(2)]
    assert sorted(p["host"] for p in placed) == ["host-a", "hv-2"]
    assert all(p["placement_group"] == "web" for p in placed)
    r = create(api, "web-2", placement_group="web")
    assert r.status_code == 409 and r.json()["code"] == "no_host_fits"
    assert r.json()["detail"] == ("no host fits: zone local-1a has 2 hosts: 2 already hold an "
                                  "instance of spread placement group web")
    # The same request outside the group fits: only the group's rule refused it.
    assert create(api, "web-2").status_code == 202
    listed = api.get("/v1/placement-groups").json()
    assert [(g["name"], g["instances"]) for g in listed] == [("web", ["web-0", "web-1"])]
    assert api.get("/v1/instances/web-0").json()["placement_group"] == "web"


def test_cluster_keeps_instances_on_one_host(api: TestClient, svc: Services) -> None:
    register(svc, "hv-2")
    api.post("/v1/placement-groups", json={"name": "db", "strategy": "cluster"})
    # Spread would alternate between the two hosts; the group keeps all on the first one's.
    hosts = {create(api, f"db-{i}", placement_group="db").json()["host"] for i in range(4)}
    assert hosts == {"host-a"}  # the first of two empty hosts
    r = create(api, "db-4", placement_group="db")  # the fixture's host-a holds 4 vCPUs
    assert r.status_code == 409
    assert r.json()["detail"] == (
        "no host fits: zone local-1a has 2 hosts: 1 is not the host of cluster placement "
        "group db, 1 lacks 1 vCPUs (largest free: 0)")


def test_groups_are_checked_scoped_and_deleted_only_when_empty(api: TestClient) -> None:
    for body, code in (({"name": "g", "strategy": "random"}, "invalid_strategy"),
                       ({"name": "Bad_Name", "strategy": "spread"}, "invalid_name")):
        r = api.post("/v1/placement-groups", json=body)
        assert r.status_code == 400 and r.json()["code"] == code, r.text
    assert api.post("/v1/placement-groups",
                    json={"name": "g", "strategy": "spread"}).status_code == 201
    r = api.post("/v1/placement-groups", json={"name": "g", "strategy": "cluster"})
    assert r.status_code == 409 and r.json()["code"] == "name_taken"
    r = create(api, "x", placement_group="nope")
    assert r.status_code == 404 and r.json()["code"] == "unknown_placement_group"
    assert api.get("/v1/instances").json() == []
    assert create(api, "x", placement_group="g").status_code == 202
    r = api.delete("/v1/placement-groups/g")
    assert r.status_code == 409 and r.json()["code"] == "placement_group_in_use"
    assert "x" in r.json()["detail"]
    # Another project neither sees nor uses it.
    api.post("/v1/projects", json={"name": "team"})
    assert api.get("/v1/placement-groups", params={"project": "team"}).json() == []
    r = api.post("/v1/instances", params={"project": "team"},
                 json={"name": "y", "image": "tiny", "type": "t1.nano", "placement_group": "g"})
    assert r.status_code == 404
    user = member(api)
    assert [g["name"] for g in user.get("/v1/placement-groups").json()] == ["g"]
    api.delete("/v1/instances/x")
    api.post("/v1/placement-groups", json={"name": "empty", "strategy": "cluster"})
    assert api.delete("/v1/placement-groups/empty").status_code == 204
    assert [g["name"] for g in api.get("/v1/placement-groups").json()] == ["g"]
    r = api.delete("/v1/placement-groups/empty")
    assert r.status_code == 404 and r.json()["code"] == "unknown_placement_group"
