"""Bare-metal nodes over the REST API: admins only, the contract's JSON fields, and bad input
refused with a stable code before anything is stored."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cumulo.db.tables import BaremetalNodeRow
from cumulo.services.context import Services
from tests.conftest import stored_state

NODES = "/v1/baremetal/nodes"
FIELDS = {"name", "zone", "state", "last_error", "arch", "vcpus", "ram_mib", "disk_gib",
          "instance"}


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "bm-1", "zone": "local-1a", "redfish_url": "http://127.0.0.1:9",
        "system": "n1", "username": "admin", "password": "hunter2 two", "arch": "x86_64",
        "vcpus": 2, "ram_mib": 1024, "disk_gib": 4}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}  # None: the field left out


@pytest.fixture
def keyed_api(api: TestClient, svc: Services) -> TestClient:
    svc.server_key = secrets.token_bytes(32)
    return api


def test_enroll_list_show_delete(keyed_api: TestClient) -> None:
    r = keyed_api.post(NODES, json=body())
    assert r.status_code == 201, r.text
    node = r.json()
    assert node.keys() >= FIELDS
    assert (node["name"], node["state"], node["instance"], node["redfish_system"]) == \
        ("bm-1", "enroll", None, "/redfish/v1/Systems/n1")
    assert "hunter2" not in r.text and "password" not in node
    assert [n["name"] for n in keyed_api.get(NODES).json()] == ["bm-1"]
    shown = keyed_api.get(f"{NODES}/bm-1")
    assert shown.status_code == 200 and "hunter2" not in shown.text
    r = keyed_api.delete(f"{NODES}/bm-1")
    assert r.status_code == 202 and r.json()["state"] == "deleting"
    assert keyed_api.get(f"{NODES}/nope").json()["code"] == "unknown_node"


def test_nodes_are_for_admins_only(keyed_api: TestClient) -> None:
    token = keyed_api.post("/v1/projects/default/tokens").json()["token"]
    user = TestClient(keyed_api.app)
    user.headers["Authorization"] = f"Bearer {token}"
    assert user.post(NODES, json=body()).status_code == 403
    assert user.get(NODES).status_code == 403
    assert keyed_api.get(NODES).json() == []


BAD: list[tuple[dict[str, Any], int, str]] = [  # (changes to a good one, status, code)
    ({"name": "Bad_Name"}, 400, "invalid_name"),
    ({"zone": "mars-1a"}, 404, "unknown_zone"),
    ({"redfish_url": "http://bmc/redfish/v1"}, 400, "invalid_redfish_url"),
    ({"redfish_url": "http://u:p@bmc"}, 400, "invalid_redfish_url"),
    ({"system": "../Managers/1"}, 400, "invalid_redfish_system"),
    ({"arch": "riscv64"}, 400, "unknown_arch"),
    ({"vcpus": 0}, 400, "invalid_size"),
    ({"ram_mib": 2**31}, 400, "invalid_size"),
    ({"disk_gib": -1}, 400, "invalid_size"),
    ({"username": "a:b"}, 400, "invalid_bmc_username"),
    ({"password": "line\nbreak"}, 400, "invalid_bmc_password"),
    ({"username": None, "password": "x"}, 400, "invalid_bmc_credentials"),
    ({"vcpus": "2"}, 400, "invalid_input"),
]


def test_bad_input_is_refused_and_changes_nothing(keyed_api: TestClient, svc: Services) -> None:
    before = stored_state(svc)
    for changes, status, code in BAD:  # one cloud for all (a fixture per case costs seconds)
        r = keyed_api.post(NODES, json=body(**changes))
        assert r.status_code == status, (changes, r.text)
        assert r.json()["code"] == code and "\n" not in r.json()["detail"], (changes, r.text)
        assert "line\nbreak" not in r.text
    assert stored_state(svc) == before


def test_one_name_one_bmc_system(keyed_api: TestClient) -> None:
    assert keyed_api.post(NODES, json=body()).status_code == 201
    r = keyed_api.post(NODES, json=body(system="n2"))
    assert (r.status_code, r.json()["code"]) == (409, "node_exists")
    r = keyed_api.post(NODES, json=body(name="bm-2", system="/redfish/v1/Systems/n1"))
    assert (r.status_code, r.json()["code"]) == (409, "bmc_in_use")
    assert "bm-1" in r.json()["detail"]


def test_a_password_needs_the_server_key(api: TestClient) -> None:
    r = api.post(NODES, json=body())
    assert (r.status_code, r.json()["code"]) == (409, "no_server_key")
    r = api.post(NODES, json=body(username=None, password=None))  # a BMC without credentials
    assert r.status_code == 201, r.text


def test_a_bm1_create_without_a_fitting_node_is_refused_with_why_and_stores_nothing(
        keyed_api: TestClient, svc: Services) -> None:
    before = stored_state(svc)
    r = keyed_api.post("/v1/instances", json={"name": "metal", "image": "tiny",
                                               "type": "bm1.tiny"})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "no_node_fits"
    assert "the zone has no bare-metal node" in r.json()["detail"]
    assert stored_state(svc) == before
    types = {t["name"]: t for t in keyed_api.get("/v1/instance-types").json()}
    assert types["bm1.tiny"]["baremetal"] is True


def test_retry_is_for_a_node_in_error_only(keyed_api: TestClient, svc: Services) -> None:
    assert keyed_api.post(NODES, json=body()).status_code == 201
    r = keyed_api.post(f"{NODES}/bm-1/retry")
    assert (r.status_code, r.json()["code"]) == (409, "node_not_in_error")
    assert keyed_api.post(f"{NODES}/nope/retry").json()["code"] == "unknown_node"
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(state="error", last_error="inspection: x"))
    r = keyed_api.post(f"{NODES}/bm-1/retry")
    assert r.status_code == 200 and (r.json()["state"], r.json()["last_error"]) == ("enroll", None)


def test_a_bm1_instance_is_not_migrated(keyed_api: TestClient, svc: Services) -> None:
    assert keyed_api.post(NODES, json=body(vcpus=1, ram_mib=256, disk_gib=2)).status_code == 201
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(state="available"))
    r = keyed_api.post("/v1/instances", json={"name": "metal", "image": "tiny",
                                               "type": "bm1.tiny"})
    assert r.status_code == 202, r.text
    r = keyed_api.post("/v1/instances/metal/migrate", json={})
    assert (r.status_code, r.json()["code"]) == (409, "not_for_baremetal"), r.text
    assert "a live migration is for VMs only" in r.json()["detail"]
