"""An instance's serial console log, read from its host agent (REST and EC2 alike)."""

from __future__ import annotations

import httpx

from cumulo.domain.errors import Conflict
from cumulo.services.instances import ConsoleTarget


async def fetch(target: ConsoleTarget) -> str:
    url = target.agent_url
    transport = None
    if url.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
        url = "http://agent"
    try:
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            resp = await client.get(f"{url}/console/{target.vm_id}")
    except httpx.HTTPError as e:
        raise Conflict(
            f"the instance's host agent is unreachable: {e}", code="host_unreachable"
        ) from e
    if resp.status_code != 200:
        raise Conflict(
            f"the host agent could not read the console ({resp.status_code})",
            code="host_unreachable",
        )
    return resp.text
