"""The instance lifecycle through the REST API (control plane only: no agent here)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient


def create(api: TestClient, **over: Any) -> Any:
    body = {"name": "web-1", "image": "tiny", "type": "t1.nano"} | over
    return api.post("/v1/instances", json=body)


def count(api: TestClient) -> int:
    return len(api.get("/v1/instances").json())


def test_create_returns_202_with_the_instance_placed(api: TestClient) -> None:
    r = create(api, tags={"env": "test"})
    assert r.status_code == 202, r.text
    body = r.json()
    for key in ("id", "name", "project", "state", "zone", "arch", "type", "vcpus", "ram_mib",
                "image", "host", "created_at"):
        assert key in body
    assert body["state"] == "pending"
    assert body["host"] == "host-a"
    assert (body["vcpus"], body["ram_mib"], body["project"]) == (1, 128, "default")
    assert body["tags"] == {"env": "test"}
    shown = api.get(f"/v1/instances/{body['id']}").json()
    assert shown["created_at"].endswith(("+00:00", "Z"))  # aware on SQLite too
    assert api.get(f"/v1/instances/{body['id']}").json()["name"] == "web-1"
    assert api.get("/v1/instances/web-1").json()["id"] == body["id"]


def test_custom_size_and_arm64(api: TestClient) -> None:
    r = create(api, type=None, vcpus=2, ram_mib=300, arch="arm64")
    assert r.status_code == 202, r.text
    assert (r.json()["vcpus"], r.json()["ram_mib"], r.json()["arch"]) == (2, 300, "arm64")
    assert r.json()["type"] is None


@pytest.mark.parametrize(
    ("over", "status", "code"),
    [
        ({"type": "t9.huge"}, 404, "unknown_type"),
        ({"image": "nope"}, 404, "unknown_image"),
        ({"zone": "mars-1a"}, 404, "unknown_zone"),
        ({"arch": "sparc"}, 400, "unknown_arch"),
        ({"type": None, "vcpus": 0, "ram_mib": 128}, 400, "invalid_size"),
        ({"type": None, "vcpus": 1, "ram_mib": -5}, 400, "invalid_size"),
        ({"type": None, "vcpus": 1}, 400, "invalid_size"),
        ({"vcpus": 1, "ram_mib": 128}, 400, "invalid_size"),
        ({"type": None, "vcpus": 1, "ram_mib": 10_000_000}, 400, "too_large"),
        ({"type": None, "vcpus": 500, "ram_mib": 128}, 400, "too_large"),
        ({"name": "Web_1"}, 400, "invalid_name"),
        ({"name": "-web"}, 400, "invalid_name"),
        ({"name": "a" * 64}, 400, "invalid_name"),
        ({"name": ""}, 400, "invalid_name"),
        ({"name": "web\n"}, 400, "invalid_name"),  # `$` matched before a final newline
        ({"user_data": base64.b64encode(b"x" * (64 * 1024 + 1)).decode()}, 400,
         "user_data_too_large"),
        ({"user_data": "***not base64***"}, 400, "invalid_user_data"),
        ({"zone": "local-1b"}, 409, "no_host_fits"),  # no host in that zone
        # Found by test_bad_input_fuzz: 500s, and a detail of two lines (the tags).
        ({"bandwidth_mbps": 10**30}, 400, "invalid_size"),  # overflowed the INTEGER column
        ({"type": None, "vcpus": 1, "ram_mib": 128, "bandwidth_mbps": 2**31}, 400,
         "invalid_size"),
        ({"bandwidth_mbps": 0}, 400, "invalid_size"),  # was taken as "the type's default"
        ({"bandwidth_mbps": 100_001}, 400, "invalid_size"),  # above 100 Gbit/s
        ({"image": "ti\x00ny"}, 400, "invalid_character"),  # PostgreSQL refuses NUL
        ({"keys": ["\x00"]}, 400, "invalid_character"),
        ({"tags": {"a\nb": 1}}, 400, "invalid_input"),  # the key echoed on one line
    ],
)
def test_bad_input_is_refused_with_a_stable_code_and_changes_nothing(
    api: TestClient, over: dict[str, Any], status: int, code: str
) -> None:
    before = count(api)
    r = create(api, **over)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    assert "\n" not in r.json()["detail"]
    assert count(api) == before


def test_image_without_the_requested_arch(api: TestClient, svc: Any, tmp_path: Any) -> None:
    from cumulo.services import images
    from tests.conftest import make_image_dir

    images.register_builtin(svc, make_image_dir(tmp_path / "x", "x86_64", name="only-x86"))
    r = create(api, image="only-x86", arch="arm64")
    assert r.status_code == 400
    assert r.json()["code"] == "image_arch_mismatch"
    assert "x86_64" in r.json()["detail"]


def test_name_taken_in_project_but_free_in_another(api: TestClient) -> None:
    assert create(api).status_code == 202
    r = create(api)
    assert r.status_code == 409 and r.json()["code"] == "name_taken"
    assert api.post("/v1/projects", json={"name": "other"}).status_code == 201
    r = api.post("/v1/instances", params={"project": "other"},
                 json={"name": "web-1", "image": "tiny", "type": "t1.nano"})
    assert r.status_code == 202, r.text
    assert r.json()["project"] == "other"


def test_capacity_runs_out_with_a_reason(api: TestClient) -> None:
    # host-a has 4096 MiB: three 1300 MiB instances fit, the fourth does not.
    for i in range(3):
        assert create(api, name=f"big-{i}", type=None, vcpus=1, ram_mib=1300).status_code == 202
    r = create(api, name="big-3", type=None, vcpus=1, ram_mib=1300)
    assert r.status_code == 409
    assert r.json()["code"] == "no_host_fits"
    assert r.json()["detail"] == ("no host fits: zone local-1a has 1 host: 1 lacks 1300 MiB "
                                  "RAM (largest free: 196)")
    zone = next(z for z in api.get("/v1/zones").json() if z["name"] == "local-1a")
    assert zone["ram_mib_free"] == 4096 - 3 * 1300
    assert zone["hosts"][0]["instances"] == 3


def test_state_machine_conflicts(api: TestClient) -> None:
    iid = create(api).json()["id"]
    r = api.post(f"/v1/instances/{iid}/start")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    assert "pending" in r.json()["detail"]
    r = api.post(f"/v1/instances/{iid}/reboot")
    assert r.status_code == 409
    r = api.post(f"/v1/instances/{iid}/stop")
    assert r.status_code == 202 and r.json()["state"] == "stopping"
    assert r.json()["desired_state"] == "stopped"
    r = api.post(f"/v1/instances/{iid}/stop")
    assert r.status_code == 409
    r = api.delete(f"/v1/instances/{iid}")
    assert r.status_code == 202 and r.json()["state"] == "deleting"
    assert api.delete(f"/v1/instances/{iid}").status_code == 409


def test_auth_is_required(api: TestClient) -> None:
    bare = TestClient(api.app)
    r = bare.get("/v1/instances")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = bare.get("/v1/instances", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_member_token_is_confined_to_its_project(api: TestClient) -> None:
    assert create(api, name="admin-vm").status_code == 202
    api.post("/v1/projects", json={"name": "team"})
    token = api.post("/v1/projects/team/tokens").json()["token"]
    member = TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
    assert member.get("/v1/instances").json() == []
    r = member.get("/v1/instances", params={"project": "default"})
    assert r.status_code == 403
    assert member.get("/v1/instances/admin-vm").status_code == 404
    assert member.post("/v1/projects", json={"name": "x"}).status_code == 403
    r = member.post("/v1/instances", json={"name": "mine", "image": "tiny", "type": "t1.nano"})
    assert r.status_code == 202 and r.json()["project"] == "team"


def test_projects_lifecycle(api: TestClient) -> None:
    assert api.post("/v1/projects", json={"name": "p1"}).status_code == 201
    assert api.post("/v1/projects", json={"name": "p1"}).json()["code"] == "name_taken"
    assert api.post("/v1/projects", json={"name": "P 1"}).json()["code"] == "invalid_name"
    assert {p["name"] for p in api.get("/v1/projects").json()} == {"default", "p1"}
    api.post("/v1/instances", params={"project": "p1"},
             json={"name": "v", "image": "tiny", "type": "t1.nano"})
    r = api.delete("/v1/projects/p1")
    assert r.status_code == 409 and r.json()["code"] == "project_not_empty"
    assert api.delete("/v1/projects/default").status_code == 409
    assert api.get("/v1/instances", params={"project": "nope"}).json()["code"] == "unknown_project"


def test_catalogue_and_openapi(api: TestClient) -> None:
    types = {t["name"]: t for t in api.get("/v1/instance-types").json()}
    assert types["t1.nano"]["ram_mib"] == 128
    imgs = api.get("/v1/images").json()
    assert imgs[0]["name"] == "tiny" and set(imgs[0]["architectures"]) == {"x86_64", "arm64"}
    assert api.get("/v1/images/tiny").json()["default_user"] == "cumulo"
    assert api.get("/v1/images/none").json()["code"] == "unknown_image"
    spec = api.get("/openapi.json").json()
    assert "/v1/instances" in spec["paths"]
