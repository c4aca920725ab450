"""The agent's HTTP client for the API (the only way an agent learns or tells anything, but
that it is alive: see cumulo.beats)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from cumulo import beats
from cumulo.protocol import (
    Assignments,
    HostRegistration,
    Poll,
    Registered,
    Report,
)

_JSON = {"Content-Type": "application/json"}
_TRANSFER = httpx.Timeout(30.0, read=60.0)  # an image file: a stalled transfer is resumed
_UPLOAD_CHUNK = 1 << 20


def _client(url: str, token: str,
            transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    if url.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
        url = "http://api"
    return httpx.AsyncClient(
        base_url=url,
        transport=transport,
        timeout=httpx.Timeout(10.0, read=45.0),
        headers={"Authorization": f"Bearer {token}"},
    )


def _beat_address(url: str) -> tuple[str, int] | None:
    if url.startswith("unix:"):
        return None
    u = httpx.URL(url)
    return (u.host, u.port or (443 if u.scheme == "https" else 80)) if u.host else None


class ApiClient:
    """`url`: one API URL, or several separated by commas (API processes sharing a database):
    a request that cannot reach one moves the client on to the next, and the agent's loop
    tries again (every request of the agent protocol may be sent twice)."""

    def __init__(self, url: str, token: str,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`transport`: how to reach the API other than by `url` (tests: in process)."""
        urls = [u.strip() for u in url.split(",") if u.strip()]
        self._clients = [_client(u, token, transport) for u in urls]
        self._beat_addresses = [None if transport is not None else _beat_address(u)
                                for u in urls]
        self._current = 0
        self.beat_key = beats.key_of(token)

    def beat_address(self) -> tuple[str, int] | None:
        """Where the API process this client talks to hears beats: UDP at its HTTP host and
        port (None: it is reached over a unix socket or in process)."""
        return self._beat_addresses[self._current]

    @property
    def _http(self) -> httpx.AsyncClient:
        return self._clients[self._current]

    def _failed(self) -> None:
        self._current = (self._current + 1) % len(self._clients)

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()

    async def _post(self, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.post(path, **kw)
        except httpx.TransportError:
            self._failed()
            raise

    async def register(self, reg: HostRegistration) -> str:
        r = await self._post("/v1/agent/hosts/register", json=reg.model_dump())
        r.raise_for_status()
        return Registered.model_validate(r.json()).host_id

    async def assignments(self, host: str, since: int, wait: float,
                          dns: list[str] | None = None, have: str | None = None,
                          report: Report | None = None) -> Assignments:
        """`dns`: the DNS records held (DnsBook.claims), `have`: the instance list held
        (InstanceBook.claim), so that only changes come back; `report`: the last pass's
        observations, applied by the API before it answers (see protocol.Poll)."""
        poll = Poll(since=since, wait=wait, dns=dns or [], have=have, report=report)
        r = await self._post(f"/v1/agent/hosts/{host}/assignments",
                                  content=poll.model_dump_json(), headers=_JSON)
        r.raise_for_status()
        return Assignments.model_validate_json(r.content)

    async def report(self, host: str, report: Report) -> None:
        """A report on its own: while a long-poll is open (see agent.main)."""
        r = await self._post(f"/v1/agent/hosts/{host}/report",
                                  content=report.model_dump_json(), headers=_JSON)
        r.raise_for_status()

    # -- images (not on the hot path: once per image a host lacks, or per export) ----------

    @asynccontextmanager
    async def image_file(self, host: str, image_id: str, role: str, offset: int,
                         sha256: str) -> AsyncIterator[httpx.Response]:
        """The response to GET .../images/ID/ROLE, from byte `offset` (a range, valid only
        while the file is still the one with `sha256`: else the whole file comes)."""
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'} if offset else {}
        try:
            async with self._http.stream(
                "GET", f"/v1/agent/hosts/{host}/images/{image_id}/{role}", headers=headers,
                timeout=_TRANSFER,
            ) as r:
                yield r
        except httpx.TransportError:
            self._failed()  # the next attempt resumes from another API process
            raise

    async def images_gone(self, host: str, held: list[str]) -> list[str]:
        """Of the image ids this host caches, those the catalogue no longer has."""
        r = await self._post(f"/v1/agent/hosts/{host}/images/gone", json={"held": held})
        r.raise_for_status()
        gone = r.json().get("gone", [])
        return [str(i) for i in gone]

    async def export_status(self, host: str, export_id: str, state: str, code: str = "",
                            reason: str = "") -> None:
        r = await self._post(f"/v1/agent/hosts/{host}/exports/{export_id}/status",
                             json={"state": state, "code": code, "reason": reason})
        r.raise_for_status()

    async def export_upload(self, host: str, export_id: str, path: Path) -> httpx.Response:
        """PUT the exported disk (streamed from `path`); the API's answer, whatever it is."""
        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(_UPLOAD_CHUNK):
                    yield chunk

        try:
            return await self._http.put(
                f"/v1/agent/hosts/{host}/exports/{export_id}", content=body(),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(path.stat().st_size)},
                timeout=httpx.Timeout(30.0, read=3600.0, write=300.0),
            )
        except httpx.TransportError:
            self._failed()
            raise
