"""Join tokens: a new host's agent trades one for a host token of its own, once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cumulo.services import projects
from cumulo.services.context import Services
from tests.conftest import ADMIN, AGENT_HOST

REGISTRATION = {"zone": "local-1b", "architectures": ["x86_64"], "vcpus": 2, "ram_mib": 1024,
                "driver": "fake", "accel": "fake"}


def _token(api: TestClient, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/hosts/join-tokens", json=body)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


def _join(api: TestClient, token: str, name: str = "hv-new", zone: str = "local-1b"
          ) -> tuple[int, dict[str, Any]]:
    r = api.post("/v1/agent/join", json={"join_token": token, "name": name, "zone": zone},
                 headers={"Authorization": ""})
    return r.status_code, r.json()


def _hosts(api: TestClient) -> set[str]:
    return {h["name"] for z in api.get("/v1/zones").json() for h in z["hosts"]}


def test_a_join_token_makes_one_host_token_once(api: TestClient) -> None:
    made = _token(api, zone="local-1b", ttl="10m")
    assert made["token"].startswith("cmj_") and made["zone"] == "local-1b"
    status, joined = _join(api, made["token"])
    assert status == 201, joined
    host = {"Authorization": f"Bearer {joined['host_token']}"}
    r = api.post("/v1/agent/hosts/register", json={"name": "hv-new", **REGISTRATION},
                 headers=host)
    assert r.status_code == 200, r.text
    assert "hv-new" in _hosts(api)
    # The host token is the host's only: it may not act for another host nor use the user API.
    r = api.post("/v1/agent/hosts/register", json={"name": AGENT_HOST, **REGISTRATION},
                 headers=host)
    assert r.status_code == 403
    assert api.get("/v1/instances", headers=host).status_code == 403
    # Used once: a second host (or a replay) is refused, and nothing changes.
    status, body = _join(api, made["token"], name="hv-other")
    assert (status, body["code"]) == (401, "join_token_used"), body
    assert "hv-other" not in _hosts(api)


@pytest.mark.parametrize(("tamper", "code"), [
    (lambda t: t[:-2] + ("aa" if not t.endswith("aa") else "bb"), "invalid_join_token"),
    (lambda t: "cmj_forged", "invalid_join_token"),
])
def test_forged_join_tokens_are_refused(api: TestClient, tamper: Any, code: str) -> None:
    made = _token(api)
    status, body = _join(api, tamper(made["token"]))
    assert (status, body["code"]) == (401, code)
    status, body = _join(api, made["token"])  # the real one still works
    assert status == 201, body


def test_expired_and_wrong_zone_tokens_are_refused(api: TestClient) -> None:
    short = _token(api, ttl="1s")
    time.sleep(1.2)
    status, body = _join(api, short["token"])
    assert (status, body["code"]) == (401, "join_token_expired")
    zoned = _token(api, zone="local-1a")
    status, body = _join(api, zoned["token"], zone="local-1b")
    assert (status, body["code"]) == (401, "join_token_zone")
    assert "this join token is for zone local-1a" in body["detail"]
    status, body = _join(api, zoned["token"], zone="local-1a")  # not spent by the refusal
    assert status == 201, body


def test_a_running_hosts_name_cannot_be_taken(api: TestClient) -> None:
    made = _token(api)
    status, body = _join(api, made["token"], name=AGENT_HOST, zone="local-1a")
    assert (status, body["code"]) == (409, "host_name_taken")
    status, body = _join(api, made["token"], name="Bad_Name")
    assert (status, body["code"]) == (400, "invalid_name")


def test_only_admins_make_join_tokens_and_bad_input_is_refused(
        api: TestClient, svc: Services) -> None:
    projects.create(svc, ADMIN, "team")
    member = projects.create_member_token(svc, ADMIN, "team").token
    r = api.post("/v1/hosts/join-tokens", json={}, headers={"Authorization": f"Bearer {member}"})
    assert r.status_code == 403
    for body, code in (({"ttl": "forever"}, "invalid_duration"),
                       ({"ttl": "31d"}, "invalid_duration"),
                       ({"ttl": "0s"}, "invalid_duration"),
                       ({"zone": "atlantis"}, "unknown_zone")):
        r = api.post("/v1/hosts/join-tokens", json=body)
        assert r.json()["code"] == code, (body, r.text)
