"""The price list and what each project used (cumulo.services.prices, usage)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cumulo.api.deps import Svc, Who
from cumulo.services import prices, usage
from cumulo.services.prices import PriceView
from cumulo.services.usage import UsageView

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/prices")
def list_prices(svc: Svc, who: Who) -> list[PriceView]:
    """What each instance type, GiB-month of volume and snapshot, public IP hour and
    dedicated host hour costs."""
    del who  # every authenticated caller may read the price list
    return prices.price_list(svc.settings)


@router.get("/usage")
def show_usage(svc: Svc, who: Who, project: str | None = None,
               start: Annotated[str | None, Query(alias="from", max_length=64)] = None,
               end: Annotated[str | None, Query(alias="to", max_length=64)] = None
               ) -> UsageView:
    """Lines per resource and a total. `from`, `to`: a date (2026-01-31) or an ISO 8601
    time; default from the start of this month (UTC) to now. Members: their project's;
    admins: `project`'s, or every project's."""
    return usage.usage(svc, who, project, start, end)
