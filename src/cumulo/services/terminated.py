"""Instances deleted lately, as they were when deleted: EC2 clients expect a terminated
instance to stay visible for a while (the EC2 API shows them `terminated`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from cumulo.db.tables import InstanceRow, TerminatedInstanceRow, UtcDateTime
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import InstanceView


def _since(svc: Services) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=svc.settings.ec2.terminated_visible_s)


_PURGE = delete(TerminatedInstanceRow).where(
    TerminatedInstanceRow.terminated_at < bindparam("since", type_=UtcDateTime()))


def record(s: Session, project_id: str, view: InstanceView) -> None:
    """Keep `view` (an instance being deleted); `purge` forgets it after the retention."""
    s.merge(TerminatedInstanceRow(id=view.id, project_id=project_id,
                                  view=view.model_dump(mode="json"),
                                  terminated_at=datetime.now(UTC)))


def purge(svc: Services) -> int:
    """Forget the records past the retention (the API's periodic sweep: not a statement
    more for every delete; `recent` never shows them anyway). How many were forgotten."""
    with svc.db.session() as s:
        return int(s.connection().execute(_PURGE, {"since": _since(svc)}).rowcount or 0)


def recent(svc: Services, who: Principal, project: str | None
           ) -> list[tuple[InstanceView, datetime]]:
    """The project's instances deleted within the retention and gone since, with when."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = s.scalars(
            select(TerminatedInstanceRow)
            .where(TerminatedInstanceRow.project_id == prj.id,
                   TerminatedInstanceRow.terminated_at >= _since(svc),
                   TerminatedInstanceRow.id.not_in(
                       select(InstanceRow.id).where(InstanceRow.project_id == prj.id)))
            .order_by(TerminatedInstanceRow.terminated_at))
        return [(InstanceView.model_validate(r.view), r.terminated_at) for r in rows]
