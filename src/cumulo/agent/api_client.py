"""The agent's HTTP client for the API (the only way an agent learns or tells anything)."""

from __future__ import annotations

from typing import Any

import httpx

from cumulo.protocol import (
    Assignments,
    HostRegistration,
    Poll,
    Registered,
    Report,
)

_JSON = {"Content-Type": "application/json"}


def _client(url: str, token: str) -> httpx.AsyncClient:
    transport = None
    if url.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
        url = "http://api"
    return httpx.AsyncClient(
        base_url=url,
        transport=transport,
        timeout=httpx.Timeout(10.0, read=45.0),
        headers={"Authorization": f"Bearer {token}"},
    )


class ApiClient:
    """`url`: one API URL, or several separated by commas (API processes sharing a database):
    a request that cannot reach one moves the client on to the next, and the agent's loop
    tries again (every request of the agent protocol may be sent twice)."""

    def __init__(self, url: str, token: str) -> None:
        self._clients = [_client(u.strip(), token) for u in url.split(",") if u.strip()]
        self._current = 0

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
