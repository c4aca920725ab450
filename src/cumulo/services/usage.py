"""Usage: what each resource of a project used in a period and what it costs, computed from
the recorded metering intervals (cumulo.services.metering) and nothing else.

A line per resource and rate (a volume that grew has a line per size): the seconds of its
intervals inside [from, to), the hourly price, and the amount (seconds x price / 3600, to
6 decimals); the total is the sum of the lines' amounts. Amounts are exact decimal text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel, Field
from sqlalchemy import or_, select

from cumulo.db.tables import ProjectRow, UsageIntervalRow
from cumulo.domain.errors import InvalidInput
from cumulo.domain.validation import one_line
from cumulo.services import metering
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.prices import decimal_text

AMOUNT_PLACES = 6
PRICE_PLACES = 9
# The earliest date a period may start: older dates are typing mistakes, not usage.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class UsageLine(BaseModel):
    project: str
    resource: str  # its name (an IP address for a public IP)
    resource_id: str
    kind: str  # instance | boot_disk | volume | snapshot | public_ip | dedicated_host
    basis: str  # the price it paid: "type s1.medium", "volume GiB-month" ...
    quantity: int  # 1, or GiB
    seconds: int
    price_per_hour: str
    amount: str
    currency: str


class UsageView(BaseModel):
    project: str | None  # None: every project (an admin's view)
    start: datetime = Field(serialization_alias="from")  # `from`: a Python keyword
    end: datetime = Field(serialization_alias="to")
    currency: str
    lines: list[UsageLine]
    total: str


def parse_time(text: str, what: str) -> datetime:
    """A date (2026-01-31: its midnight, UTC) or an ISO 8601 time (UTC unless it says)."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{what}: {one_line(text, 40)!r} is neither a date (2026-01-31) nor "
                           "an ISO 8601 time (2026-01-31T12:00:00Z)", code="invalid_date") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    if at < EARLIEST:
        raise InvalidInput(f"{what}: {one_line(text, 40)!r} is before {EARLIEST.date()}",
                           code="invalid_date")
    return at.astimezone(UTC)


def period(now: datetime, start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """[from, to): by default from the start of the current month (UTC) to now."""
    to = parse_time(end, "to") if end else now
    frm = (parse_time(start, "from") if start
           else to.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    if frm >= to:
        raise InvalidInput(f"from ({frm.isoformat()}) must be before to ({to.isoformat()})",
                           code="invalid_period")
    return frm, to


@dataclass
class _Acc:
    project_id: str
    resource: str
    resource_id: str
    kind: str
    basis: str
    quantity: int
    unit_price: Decimal
    period_hours: int
    seconds: int = 0


def usage(svc: Services, who: Principal, project: str | None = None,
          start: str | None = None, end: str | None = None) -> UsageView:
    """Members see their project's usage; admins one project's (`project`) or every one."""
    now = metering.now(svc)
    frm, to = period(now, start, end)
    q = (select(UsageIntervalRow)
         .where(UsageIntervalRow.started_at < to,
                or_(UsageIntervalRow.ended_at.is_(None), UsageIntervalRow.ended_at > frm))
         .order_by(UsageIntervalRow.started_at, UsageIntervalRow.id))
    with svc.db.session() as s:
        scope = None
        if project is not None or not who.is_admin:
            scope = scope_project(s, who, project)
            q = q.where(UsageIntervalRow.project_id == scope.id)
        rows = list(s.scalars(q))
        names = {pid: name for pid, name in s.execute(select(ProjectRow.id, ProjectRow.name))}
    acc: dict[tuple[str, str, str, int, str, int], _Acc] = {}
    for r in rows:
        # An open interval runs until now; nothing is billed ahead of time.
        seconds = int((min(r.ended_at or now, to, now) - max(r.started_at, frm)).total_seconds())
        if seconds <= 0:
            continue
        key = (r.resource_id, r.kind, r.basis, r.quantity, r.unit_price, r.period_hours)
        line = acc.get(key)
        if line is None:
            line = acc[key] = _Acc(r.project_id, r.resource_name, r.resource_id, r.kind, r.basis,
                                   r.quantity, Decimal(r.unit_price), r.period_hours)
        line.seconds += seconds
    currency = svc.settings.prices.currency
    lines = []
    total = Decimal(0)
    for a in acc.values():
        per_hour = a.quantity * a.unit_price / a.period_hours
        amount = (a.seconds * per_hour / 3600).quantize(Decimal(1).scaleb(-AMOUNT_PLACES))
        total += amount
        lines.append(UsageLine(project=names.get(a.project_id, a.project_id), resource=a.resource,
                               resource_id=a.resource_id, kind=a.kind, basis=a.basis,
                               quantity=a.quantity, seconds=a.seconds,
                               price_per_hour=decimal_text(per_hour, PRICE_PLACES),
                               amount=decimal_text(amount, AMOUNT_PLACES), currency=currency))
    lines.sort(key=lambda x: (x.project, x.resource, x.kind, x.basis, x.quantity))
    return UsageView(project=scope.name if scope else None, start=frm, end=to, currency=currency,
                     lines=lines, total=decimal_text(total, AMOUNT_PLACES))
