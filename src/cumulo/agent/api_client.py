"""The agent's HTTP client for the API (the only way an agent learns or tells anything)."""

from __future__ import annotations

import httpx

from cumulo.protocol import (
    Assignments,
    HostRegistration,
    Poll,
    Registered,
    Report,
)

_JSON = {"Content-Type": "application/json"}


class ApiClient:
    def __init__(self, url: str, token: str) -> None:
        transport = None
        if url.startswith("unix:"):
            transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
            url = "http://api"
        self._http = httpx.AsyncClient(
            base_url=url,
            transport=transport,
            timeout=httpx.Timeout(10.0, read=45.0),
            headers={"Authorization": f"Bearer {token}"},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def register(self, reg: HostRegistration) -> str:
        r = await self._http.post("/v1/agent/hosts/register", json=reg.model_dump())
        r.raise_for_status()
        return Registered.model_validate(r.json()).host_id

    async def assignments(self, host: str, since: int, wait: float,
                          dns: list[str] | None = None, have: str | None = None,
                          report: Report | None = None) -> Assignments:
        """`dns`: the DNS records held (DnsBook.claims), `have`: the instance list held
        (InstanceBook.claim), so that only changes come back; `report`: the last pass's
        observations, applied by the API before it answers (see protocol.Poll)."""
        poll = Poll(since=since, wait=wait, dns=dns or [], have=have, report=report)
        r = await self._http.post(f"/v1/agent/hosts/{host}/assignments",
                                  content=poll.model_dump_json(), headers=_JSON)
        r.raise_for_status()
        return Assignments.model_validate_json(r.content)

    async def report(self, host: str, report: Report) -> None:
        """A report on its own: while a long-poll is open (see agent.main)."""
        r = await self._http.post(f"/v1/agent/hosts/{host}/report",
                                  content=report.model_dump_json(), headers=_JSON)
        r.raise_for_status()
