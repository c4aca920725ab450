"""The OpenAPI document says what each operation really answers: its success, and the
problem+json errors it can raise, each under the status its error class carries
(cumulo.domain.errors). Not FastAPI's default 422, which this API never answers (a request
it cannot read is a 400 invalid_input: api.errors).

An operation's errors come from two places. Those that follow from its shape are derived
from the document itself, where the code that raises them is shared (`_implied`). Those of
its own service are given on its route as the error classes it raises:
`responses=raises(Conflict, InsufficientCapacity)`.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

from cumulo.domain.errors import CumuloError, Forbidden, InvalidInput, NotFound, Unauthorized

Responses = dict[int | str, dict[str, Any]]
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "An error (RFC 9457): `code` is stable, `detail` one line for people.",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string", "example": "urn:cumulo:error:unknown_instance"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "detail": {"type": "string"},
    },
}


def _problem(status: int, errors: Iterable[type[CumuloError]]) -> dict[str, Any]:
    codes = sorted({e.code for e in errors})
    return {
        "description": f"{http.HTTPStatus(status).phrase}: a problem whose `code` says why "
                       f"({', '.join(codes)}, ...)",
        "content": {"application/problem+json": {"schema": PROBLEM_REF}},
    }


def _by_status(errors: Iterable[type[CumuloError]]) -> dict[int, list[type[CumuloError]]]:
    grouped: dict[int, list[type[CumuloError]]] = {}
    for error in errors:
        grouped.setdefault(error.status, []).append(error)
    return grouped


def raises(*errors: type[CumuloError]) -> Responses:
    """A route's `responses=`: the errors its own service raises (beyond `_implied`)."""
    return {status: _problem(status, group) for status, group in _by_status(errors).items()}


def _implied(op: dict[str, Any]) -> list[type[CumuloError]]:
    """The errors every operation of this shape can answer, from the code they share."""
    params = op.get("parameters", [])
    places = {p["in"] for p in params}
    names = {(p["in"], p["name"].lower()) for p in params}
    errors: list[type[CumuloError]] = []
    if ("header", "authorization") in names:
        errors.append(Unauthorized)  # deps.principal: no token, or an unknown one
    if ("query", "project") in names:
        errors += [Forbidden, NotFound]  # auth.scope_project: not yours, unknown_project
    if "path" in places:
        errors.append(NotFound)  # the resource the path names
    if places & {"path", "query"} or "requestBody" in op:
        # Validation (invalid_input), inputs.refuse_unstorable (invalid_character),
        # segments.OneSegmentPerName (invalid_name).
        errors.append(InvalidInput)
    return errors


def document_problems(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` (FastAPI's document) with every operation's real error answers."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            responses: dict[str, Any] = op.setdefault("responses", {})
            responses.pop("422", None)
            for status, group in _by_status(_implied(op)).items():
                declared = responses.get(str(status))
                responses[str(status)] = _problem(status, group) if declared is None else \
                    declared
            for answered, answer in responses.items():
                if int(answered) >= 400:  # also those FastAPI wrote from `raises`
                    answer["content"] = {"application/problem+json": {"schema": PROBLEM_REF}}
            op["responses"] = dict(sorted(responses.items()))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    return doc


def install(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document it generates; this rewrites it once per generation.
        doc = generate()
        if "Problem" not in doc.get("components", {}).get("schemas", {}):
            document_problems(doc)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point
