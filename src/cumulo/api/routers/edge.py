"""The edge's API: its table of public addresses, by long-poll. The edge's token only."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cumulo.api.deps import Svc, Who
from cumulo.api.openapi import raises
from cumulo.api.routers.agents import MAX_WAIT_S, unless_gone
from cumulo.api.threads import service
from cumulo.domain.errors import Forbidden
from cumulo.protocol import EdgeTable
from cumulo.services import edge_table
from cumulo.services.auth import require_edge
from cumulo.services.notifier import EDGE

router = APIRouter(prefix="/v1/edge", tags=["edge"], responses=raises(Forbidden))


@router.get("/table", response_model=EdgeTable)
async def table(request: Request, svc: Svc, who: Who, since: int = -1,
                wait: float = 0.0) -> Response:
    """At once when anything changed since `since`, else after up to `wait` s (a heartbeat)."""
    require_edge(who)
    version = svc.notifier.version(EDGE)
    if since == version and wait > 0:
        woken = await unless_gone(request, svc.notifier.wait(EDGE, since, min(wait, MAX_WAIT_S)))
        if woken is None:
            return Response(status_code=204)
        version = woken
    entries = await service(svc, edge_table.entries, svc, who)
    return Response(EdgeTable(version=version, entries=entries).model_dump_json(),
                    media_type="application/json")
