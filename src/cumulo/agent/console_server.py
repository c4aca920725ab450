"""The agent's own small HTTP endpoint (unix socket or loopback): serves console logs and the
serial ports to the API, which proxies them to users. Agents never open the database; the API
never reads a host's files directly, so the same path works when the host is another machine.

`/serial/{vm_id}` is a WebSocket: binary messages carry the bytes typed (to the guest) and the
bytes the guest writes (from it). A port that cannot be opened closes it with code 4409 and
the reason; else a text message "ready" comes first. The VM stopping closes it with 1000.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, WebSocket
from fastapi.responses import PlainTextResponse

from cumulo.agent.drivers.base import Driver, DriverError
from cumulo.agent.serial_hub import SerialHub, Viewer
from cumulo.domain.ids import is_id
from cumulo.ws_relay import received_bytes, until_either

CLOSE_UNAVAILABLE = 4409


def make_app(driver: Driver, hub: SerialHub | None = None) -> FastAPI:
    app = FastAPI(title="cumulo-agent", openapi_url=None, docs_url=None, redoc_url=None)
    serial_hub = hub if hub is not None else SerialHub(driver)

    @app.get("/console/{vm_id}", response_class=PlainTextResponse)
    async def console(vm_id: str) -> PlainTextResponse:
        if not is_id(vm_id):
            raise HTTPException(400, "malformed id")
        return PlainTextResponse(await driver.console_log(vm_id))

    @app.websocket("/serial/{vm_id}")
    async def serial(ws: WebSocket, vm_id: str) -> None:
        await ws.accept()
        if not is_id(vm_id):
            await ws.close(CLOSE_UNAVAILABLE, "malformed id")
            return
        try:
            viewer = await serial_hub.join(vm_id)
        except DriverError as e:
            await ws.close(CLOSE_UNAVAILABLE, _reason(str(e)))
            return
        try:
            await ws.send_text("ready")
            await _relay(ws, viewer)
        finally:
            await viewer.leave()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _reason(text: str) -> str:
    """A WebSocket close reason: at most 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore")


async def _relay(ws: WebSocket, viewer: Viewer) -> None:
    """Until either side ends: the guest's output to the socket, the socket's bytes to it."""

    async def down() -> None:
        while (data := await viewer.output.get()) is not None:
            await ws.send_bytes(data)
        await ws.close(1000, "the serial port closed (the instance stopped)")

    async def up() -> None:
        async for data in received_bytes(ws):
            await viewer.type(data)

    await until_either(down(), up())
