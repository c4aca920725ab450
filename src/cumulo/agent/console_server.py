"""The agent's own small HTTP endpoint (unix socket or loopback): serves console logs to the
API, which proxies them to users. Agents never open the database; the API never reads a host's
files directly, so the same path works when the host is another machine."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse

from cumulo.agent.drivers.base import Driver
from cumulo.domain.ids import is_id


def make_app(driver: Driver) -> FastAPI:
    app = FastAPI(title="cumulo-agent", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/console/{vm_id}", response_class=PlainTextResponse)
    async def console(vm_id: str) -> PlainTextResponse:
        if not is_id(vm_id):
            raise HTTPException(400, "malformed id")
        return PlainTextResponse(await driver.console_log(vm_id))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
