"""Every error leaves the API as application/problem+json with a stable `code`."""

from __future__ import annotations

import http
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cumulo.domain.errors import CumuloError
from cumulo.domain.validation import one_line

# A detail echoes what the user sent (a name, a JSON key): it stays one line and short enough
# to read, however long or odd the input.
MAX_DETAIL = 500


def problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        media_type="application/problem+json",
        content={
            "type": f"urn:cumulo:error:{code}",
            "title": code,
            "status": status,
            "code": code,
            "detail": one_line(detail, MAX_DETAIL),
        },
    )


def _http_code(status: int) -> str:
    """The routing layer's errors (no such path: 404, wrong method: 405) by their HTTP name:
    not_found, method_not_allowed, ..."""
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error.get("loc", ()) if p != "body")


def validation_detail(errors: Sequence[Any]) -> str:
    """One line for pydantic's errors: every unknown field by name (a client that misspells
    two learns both at once), else the first error with where it is."""
    unknown = [_where(e) for e in errors if e.get("type") == "extra_forbidden"]
    if unknown:
        return f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
    first = errors[0]
    where, msg = _where(first), first.get("msg", "invalid")
    return f"{where}: {msg}" if where else f"body: {msg}"


def install(app: FastAPI) -> None:
    @app.exception_handler(CumuloError)
    async def _cumulo(_: Request, exc: CumuloError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(400, "invalid_input", validation_detail(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's router answers an unknown path or method itself, as plain JSON.
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        response = problem(exc.status_code, _http_code(exc.status_code), detail)
        if exc.headers:
            response.headers.update(exc.headers)  # e.g. 405's Allow
        return response
