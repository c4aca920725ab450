"""The event log (cumulo.services.events) and the quotas of the caller's project."""

from __future__ import annotations

from fastapi import APIRouter, Query

from cumulo.api.deps import Svc, Who
from cumulo.services import events, quotas
from cumulo.services.views import EventView, QuotaView

router = APIRouter(prefix="/v1", tags=["events"])


@router.get("/events")
def list_events(svc: Svc, who: Who, project: str | None = None, resource: str | None = None,
                since: str | None = None,
                limit: int = Query(default=events.MAX_LIST, ge=1, le=events.MAX_LIST)
                ) -> list[EventView]:
    """Oldest first. `resource`: an id or a name; `since`: ISO 8601 or an age (10m, 2h)."""
    return events.list_events(svc, who, project, resource, since, limit)


@router.get("/quotas")
def show_quotas(svc: Svc, who: Who, project: str | None = None) -> QuotaView:
    """The limits and usage of the caller's project (admins: `project`, else default)."""
    return quotas.show(svc, who, project)
