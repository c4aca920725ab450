"""The interactive serial console: a WebSocket from the user to the instance's serial port,
relayed through the instance's host agent (see cumulo.agent.console_server).

Authorised like the REST API, but the token never goes in the URL (URLs end up in logs and
browser history): a client sends `Authorization: Bearer <token>` with the upgrade request,
or, as browsers cannot set that header, `{"token": "<token>"}` as its first text message.
The API then answers one text message, `{"type": "ready"}` or `{"type": "error", "code",
"detail"}` (and closes with 4000 + the HTTP status the REST API would give), after which
binary messages carry bytes both ways. When the instance stops the API sends
`{"type": "closed", "detail"}` and closes with 1000. Closing the socket frees everything: the
agent closes the port when its last viewer leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from cumulo.api.deps import principal_of
from cumulo.api.inputs import check
from cumulo.api.threads import service
from cumulo.domain.errors import Conflict, CumuloError, InvalidInput, Unauthorized
from cumulo.services import instances
from cumulo.services.context import Principal, Services
from cumulo.ws_relay import received_bytes, until_either

router = APIRouter(tags=["instances"])

AUTH_TIMEOUT_S = 10.0  # for the first message, when the token did not come in a header
AGENT_TIMEOUT_S = 10.0
MAX_MESSAGE = 64 * 1024


@router.websocket("/v1/instances/{ref}/serial")
async def serial(ws: WebSocket, ref: str, project: str | None = None) -> None:
    await ws.accept()
    try:
        check({"ref": ref, "project": project or ""}, "")
        who = await _who(ws)
        svc: Services = ws.app.state.services
        target = await service(svc, instances.console_target, svc, who, project, ref)
        agent = await _open_agent(target)
    except CumuloError as e:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await ws.send_text(json.dumps({"type": "error", "code": e.code,
                                           "detail": e.message}))
            await ws.close(4000 + e.status, e.code)
        return
    except WebSocketDisconnect:
        return
    async with agent:
        await ws.send_text(json.dumps({"type": "ready"}))
        await _relay(ws, agent)


async def _who(ws: WebSocket) -> Principal:
    authorization = ws.headers.get("authorization")
    if authorization is None:
        try:
            first = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
        except TimeoutError:
            raise Unauthorized("no token: send {\"token\": \"...\"} first") from None
        if first["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(first.get("code", 1000))
        try:
            token = json.loads(first.get("text") or first.get("bytes") or b"").get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise InvalidInput('the first message must be {"token": "<token>"}',
                               code="invalid_input")
        check(token, "token")
        authorization = f"Bearer {token}"
    return await principal_of(ws.app, authorization)


async def _open_agent(target: instances.ConsoleTarget) -> ClientConnection:
    """The agent's WebSocket to the VM's serial port, once it said "ready"."""
    url = target.agent_url
    try:
        if url.startswith("unix:"):
            conn = await unix_connect(url.removeprefix("unix:"),
                                      f"ws://agent/serial/{target.vm_id}",
                                      open_timeout=AGENT_TIMEOUT_S, max_size=MAX_MESSAGE)
        else:
            ws_url = "ws" + url.removeprefix("http")
            conn = await connect(f"{ws_url}/serial/{target.vm_id}",
                                 open_timeout=AGENT_TIMEOUT_S, max_size=MAX_MESSAGE)
    except (OSError, TimeoutError, WebSocketException) as e:
        raise Conflict(f"the instance's host agent is unreachable: {e}",
                       code="host_unreachable") from e
    try:
        hello = await asyncio.wait_for(conn.recv(), AGENT_TIMEOUT_S)
    except ConnectionClosed as e:
        raise Conflict(e.rcvd.reason if e.rcvd else "the serial port is unavailable",
                       code="serial_unavailable") from e
    except TimeoutError:
        await conn.close()
        raise Conflict("the host agent did not open the serial port in time",
                       code="host_unreachable") from None
    if hello != "ready":
        await conn.close()
        raise Conflict("the host agent answered oddly", code="host_unreachable")
    return conn


async def _relay(ws: WebSocket, agent: ClientConnection) -> None:
    """Bytes both ways until either side closes; then the other is closed too."""

    async def down() -> None:
        try:
            async for data in agent:
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
        except ConnectionClosed:
            pass
        reason = agent.close_reason or "the serial port closed"
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await ws.send_text(json.dumps({"type": "closed", "detail": reason}))
            await ws.close(1000)

    async def up() -> None:
        async for data in received_bytes(ws):
            await agent.send(data)

    await until_either(down(), up())
