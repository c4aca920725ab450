"""What the web console needs of the API: its files at /, who a token is, and a create
checked without creating (its form's errors next to their fields)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cumulo.web import STATIC


def test_the_console_is_served_at_the_root_with_a_strict_policy(api: TestClient) -> None:
    anon = TestClient(api.app)
    r = anon.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script type="module" src="/static/js/main.js">' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    js = anon.get("/static/js/main.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "script-src 'self'" in js.headers["content-security-policy"]
    assert anon.get("/static/vendor/xterm.mjs").status_code == 200
    assert (STATIC / "vendor" / "LICENSE.xterm").is_file()
    assert anon.get("/static/../pyproject.toml").status_code == 404
    # The API's own paths are untouched: unknown ones are still problems.
    r = anon.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_no_file_fetches_anything_from_elsewhere() -> None:
    for path in STATIC.rglob("*"):
        if path.suffix in (".html", ".js", ".css") and "vendor" not in path.parts:
            text = path.read_text()
            assert "http://" not in text and "https://" not in text.replace("https://…", ""), path


def test_whoami(api: TestClient) -> None:
    assert api.get("/v1/whoami").json() == {"role": "admin", "project": None}
    api.post("/v1/projects", json={"name": "team"})
    token = api.post("/v1/projects/team/tokens").json()["token"]
    member = TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
    assert member.get("/v1/whoami").json() == {"role": "member", "project": "team"}
    r = TestClient(api.app, headers={"Authorization": "Bearer cmo_nope"}).get("/v1/whoami")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def _validate(api: TestClient, **over: Any) -> Any:
    body = {"name": "web-1", "image": "tiny", "type": "t1.nano"} | over
    return api.post("/v1/instances/validate", json=body)


@pytest.mark.parametrize(("over", "code"), [
    ({"name": "Bad Name"}, "invalid_name"),
    ({"type": "t9.huge"}, "unknown_type"),
    ({"type": None, "vcpus": 64, "ram_mib": 128}, "too_large"),
    ({"type": None, "vcpus": 1, "ram_mib": 0}, "invalid_size"),
    ({"bandwidth_mbps": 0}, "invalid_size"),
    ({"image": "nope"}, "unknown_image"),
    ({"zone": "mars-1a"}, "unknown_zone"),
    ({"keys": ["nope"]}, "unknown_keypair"),
    ({"security_groups": ["nope"]}, "unknown_security_group"),
])
def test_validate_gives_the_error_the_create_would(api: TestClient, over: dict[str, Any],
                                                    code: str) -> None:
    r = _validate(api, **over)
    assert r.status_code >= 400 and r.json()["code"] == code, r.text
    created = api.post("/v1/instances", json={"name": "web-1", "image": "tiny",
                                              "type": "t1.nano"} | over)
    assert created.json()["code"] == code


def test_validate_creates_nothing(api: TestClient) -> None:
    assert _validate(api).status_code == 204
    assert _validate(api).status_code == 204
    assert api.get("/v1/instances").json() == []
    assert api.get("/v1/networks").json() == []  # not even the default network
    assert api.post("/v1/instances", json={"name": "web-1", "image": "tiny",
                                           "type": "t1.nano"}).status_code == 202
    r = _validate(api)
    assert r.status_code == 409 and r.json()["code"] == "name_taken"
