"""Request bodies are read as the OpenAPI document types them: no "1" for an integer, no true
for 1, no "yes" for a boolean, and no field the document does not list."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

TINY = {"name": "a", "image": "tiny"}


def _refused(r: Any, *words: str) -> None:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "invalid_input", body
    for word in words:
        assert word in body["detail"], body


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/instances", TINY | {"vcpus": "1", "ram_mib": 128}, "vcpus"),
    ("/v1/instances", TINY | {"vcpus": True, "ram_mib": 128}, "vcpus"),
    ("/v1/instances", TINY | {"vcpus": 1, "ram_mib": 128.0}, "ram_mib"),
    ("/v1/instances", TINY | {"type": "t1.nano", "tags": {"k": 1}}, "tags.k"),
    ("/v1/volumes", {"name": "v", "size_gib": 1, "delete_on_termination": "yes"},
     "delete_on_termination"),
    ("/v1/volumes", {"name": "v", "size_gib": 1, "delete_on_termination": 1},
     "delete_on_termination"),
    ("/v1/volumes", {"name": "v", "size_gib": "1"}, "size_gib"),
    ("/v1/security-groups/default/rules", {"proto": "tcp", "port": "22"}, "port"),
    ("/v1/keypairs", {"name": 7}, "name"),
])
def test_values_of_another_type_are_refused(api: TestClient, path: str, body: dict[str, Any],
                                            field: str) -> None:
    before = (api.get("/v1/instances").json(), api.get("/v1/volumes").json(),
              api.get("/v1/security-groups").json())
    _refused(api.post(path, json=body), field)
    assert (api.get("/v1/instances").json(), api.get("/v1/volumes").json(),
            api.get("/v1/security-groups").json()) == before


def test_unknown_fields_are_refused_by_name(api: TestClient) -> None:
    r = api.post("/v1/instances", json=TINY | {"type": "t1.nano", "colour": "red", "sise": 2})
    _refused(r, "unknown fields", "colour", "sise")
    assert api.get("/v1/instances").json() == []


def test_every_request_body_refuses_unknown_fields(api: TestClient) -> None:
    """Every operation with a JSON body in the OpenAPI document (so a new one is covered
    too), with one field of no schema and none of its own."""
    doc = api.app.openapi()  # type: ignore[attr-defined]
    sent = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "application/json" not in op.get("requestBody", {}).get("content", {}):
                continue
            if path.startswith("/v1/agent/"):
                continue  # the hosts' protocol takes what it can use (services.agents)
            url = re.sub(r"\{[^}]+\}", "x", path)
            _refused(api.request(method, url, json={"no_such_field": 1}),
                     "unknown field: no_such_field")
            sent += 1
    assert sent >= 10


def test_correct_types_still_pass(api: TestClient) -> None:
    r = api.post("/v1/volumes", json={"name": "v", "size_gib": 1, "delete_on_termination": True})
    assert r.status_code == 202, r.text
    r = api.post("/v1/instances", json=TINY | {"vcpus": 1, "ram_mib": 128, "tags": {"k": "v"}})
    assert r.status_code == 202, r.text
