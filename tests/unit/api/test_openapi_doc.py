"""The OpenAPI document lists each operation's real answers: problem+json errors under the
statuses their classes carry, and no 422 (FastAPI's default, which this API never answers).
That every answer of a fuzzed request is documented is checked in test_bad_input_fuzz.py."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _ops(api: TestClient) -> dict[str, dict[str, Any]]:
    doc: dict[str, Any] = api.get("/openapi.json").json()
    return {f"{m.upper()} {p}": op for p, item in doc["paths"].items() for m, op in item.items()}


def test_no_operation_documents_422_and_every_error_is_a_problem(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["Problem"]["required"] == [
        "type", "title", "status", "code", "detail"]
    for name, op in _ops(api).items():
        assert "422" not in op["responses"], name
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                assert answer["content"] == PROBLEM, (name, status)


def test_statuses_follow_from_what_an_operation_can_raise(api: TestClient) -> None:
    ops = _ops(api)

    def statuses(name: str) -> list[str]:
        return list(ops[name]["responses"])

    # Authenticated, nothing else to check or look up.
    assert statuses("GET /v1/zones") == ["200", "401"]
    # + a project (403 another's, 404 unknown), a body (400), and its service's own errors.
    assert statuses("POST /v1/instances") == ["202", "400", "401", "403", "404", "409"]
    # + a name in the path (400 invalid_name, 404 unknown).
    assert statuses("GET /v1/volumes/{ref}") == ["200", "400", "401", "403", "404"]
    assert statuses("DELETE /v1/volumes/{ref}") == ["202", "400", "401", "403", "404", "409"]
    assert statuses("PUT /v1/images/{name}/upload") == [
        "201", "400", "401", "403", "404", "409", "413", "500", "503", "507"]
    assert statuses("POST /v1/agent/hosts/{name}/report") == ["204", "400", "401", "403", "404"]


def test_documented_answers_are_the_real_ones(api: TestClient) -> None:
    ops = _ops(api)
    api.post("/v1/volumes", json={"name": "v", "size_gib": 1})
    for method, path, op, body in [
        ("POST", "/v1/volumes", "POST /v1/volumes", {"name": "v", "size_gib": 1}),  # taken
        ("GET", "/v1/volumes/nope", "GET /v1/volumes/{ref}", None),
        ("GET", "/v1/volumes/a%2Fb", "GET /v1/volumes/{ref}", None),
        ("POST", "/v1/volumes", "POST /v1/volumes", {"name": "w"}),  # no size
    ]:
        r = api.request(method, path, json=body)
        assert str(r.status_code) in ops[op]["responses"], (path, r.status_code, r.text)
        assert r.status_code in (400, 404, 409), r.text
