"""Every error leaves the API as application/problem+json with a stable `code`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cumulo.domain.errors import CumuloError


def problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        media_type="application/problem+json",
        content={
            "type": f"urn:cumulo:error:{code}",
            "title": code,
            "status": status,
            "code": code,
            "detail": detail,
        },
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(CumuloError)
    async def _cumulo(_: Request, exc: CumuloError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return problem(400, "invalid_input", f"{where}: {first.get('msg', 'invalid')}")
