"""A path parameter is one segment: once decoded, `..`, `.` or a `/` in it never reaches a
route (the server routes on the decoded path, where `/v1/instances/x%2Fconsole` is the
console of `x`, and a proxy may resolve `%2E%2E`)."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.testclient import TestClient

from cumulo.services.context import Services
from tests.conftest import stored_state

CLIMBING = ["..%2Fvolumes%2Ftrav", "x%2Fconsole", "%2E%2E", "%2e", "..%2f..%2fzones", "a%2F"]


def _invalid_name(r: httpx.Response) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "invalid_name" and "\n" not in body["detail"], body


def test_a_climbing_segment_reaches_no_route(api: TestClient, svc: Services) -> None:
    assert api.post("/v1/volumes", json={"name": "trav", "size_gib": 1}).status_code == 202
    assert api.post("/v1/instances", json={"name": "x", "image": "tiny",
                                           "type": "t1.nano"}).status_code == 202
    before = stored_state(svc)
    _invalid_name(api.delete("/v1/instances/..%2Fvolumes%2Ftrav"))
    _invalid_name(api.get("/v1/instances/x%2Fconsole"))  # was: x's console
    _invalid_name(api.post("/v1/instances/%2E%2E%2Fvolumes%2Ftrav/stop"))
    assert stored_state(svc) == before
    assert api.get("/v1/volumes/trav").json()["state"] == "creating"


@pytest.mark.parametrize("segment", CLIMBING)
def test_every_operation_with_a_path_parameter_refuses_one(api: TestClient,
                                                           segment: str) -> None:
    doc = api.app.openapi()  # type: ignore[attr-defined]
    tried = 0
    for path, item in doc["paths"].items():
        if "{" not in path:
            continue
        for method in item:
            _invalid_name(api.request(method, re.sub(r"\{[^}]+\}", segment, path)))
            tried += 1
    assert tried > 20


def test_an_empty_name_is_no_route_and_no_redirect(api: TestClient) -> None:
    # Was: 307 to /v1/instances, where DELETE is another operation (405 there, and a POST to
    # /v1/volumes/ would have created a volume).
    r = api.delete("/v1/instances/", follow_redirects=False)
    assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
