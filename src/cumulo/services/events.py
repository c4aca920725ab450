"""The event log: what happened to each resource, kept in the database, read per project.

Events are written where a state transition is recorded, in the same transaction: by the
services when a user's request is accepted (created, stop_requested, attach_requested ...),
by the agents' reports when a host saw a change (started, stopped by the user or by the
guest, crashed with its reason, volume attached ...), by the host sweep (host down / up) and
by quota refusals. A rolled-back request leaves no event; a refused one leaves its refusal.

Kinds are part of the public contract (scripts filter on them): never rename one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from cumulo.db.tables import EventRow, ProjectRow
from cumulo.domain.errors import InvalidInput
from cumulo.domain.instance import InstanceState
from cumulo.domain.validation import one_line
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import EventView

MAX_DETAIL = 500
MAX_LIST = 1000  # the most one listing returns (the newest of those asked for)
_INSERT = insert(EventRow)


@dataclass(frozen=True)
class Event:
    project_id: str | None
    resource_type: str  # instance | volume | snapshot | public_ip | network | project | host
    resource_id: str
    resource_name: str
    kind: str
    actor: str = "user"  # user | guest | agent | system | admin
    detail: str = ""


def add(s: Session, events: Sequence[Event]) -> None:
    """Record `events` in the session's transaction: one statement, whatever their number."""
    if not events:
        return
    now = datetime.now(UTC)
    rows = [asdict(e) | {"at": now, "detail": one_line(e.detail, MAX_DETAIL),
                         "resource_name": e.resource_name[:63]} for e in events]
    s.connection().execute(_INSERT, rows)


def instance_transition(old_state: str, new_state: str, reason: str, guest: bool
                        ) -> tuple[str, str, str] | None:
    """(kind, actor, detail) of an instance's observed change of state, or None when the
    change needs no event of its own (the request that caused it has one)."""
    if new_state == old_state:
        return None
    S = InstanceState
    if new_state == S.RUNNING.value:
        kind = "rebooted" if old_state == S.REBOOTING.value else "started"
        return kind, "agent", reason
    if new_state == S.STOPPED.value:
        if guest:
            return "stopped", "guest", reason or "the guest powered itself off"
        return "stopped", "user", reason or "stopped as asked"
    if new_state == S.ERROR.value:
        return "crashed", "agent", reason or "the VM failed"
    return None


_SINCE = re.compile(r"^(\d{1,9})([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or an age: 30s, 10m, 2h, 7d."""
    now = now or datetime.now(UTC)
    m = _SINCE.match(text.strip())
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"since: {one_line(text, 40)!r} is neither an ISO 8601 time "
                           "(2026-01-31T12:00:00Z) nor an age (30s, 10m, 2h, 7d)",
                           code="invalid_since") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def list_events(svc: Services, who: Principal, project: str | None = None,
                resource: str | None = None, since: str | None = None,
                limit: int = MAX_LIST) -> list[EventView]:
    """Events, oldest first (the newest `limit` of those that match). Members read their
    project's; admins one project's (`project`) or, without it, every event, hosts' too."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit: from 1 to {MAX_LIST}", code="invalid_input")
    after = parse_since(since) if since else None
    q = select(EventRow, ProjectRow.name).outerjoin(
        ProjectRow, ProjectRow.id == EventRow.project_id)
    with svc.db.session() as s:
        if project is not None or not who.is_admin:
            q = q.where(EventRow.project_id == scope_project(s, who, project).id)
        if resource:
            q = q.where(or_(EventRow.resource_id == resource,
                            EventRow.resource_name == resource))
        if after is not None:
            q = q.where(EventRow.at >= after)
        rows = list(s.execute(q.order_by(EventRow.id.desc()).limit(limit)))
    return [EventView(id=e.id, at=e.at, project=name, resource_type=e.resource_type,
                      resource_id=e.resource_id, resource_name=e.resource_name, kind=e.kind,
                      actor=e.actor, detail=e.detail) for e, name in reversed(rows)]
