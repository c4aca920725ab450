"""Tags of the resources whose rows hold none (volumes, snapshots): key/value rows, checked
by the same rule as instance tags (domain.validation.tags)."""

from __future__ import annotations

from sqlalchemy import delete, select

from cumulo.db.tables import ResourceTagRow
from cumulo.domain.validation import tags
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services


def of(svc: Services, who: Principal, project: str | None) -> dict[str, dict[str, str]]:
    """resource id -> its tags, for the whole project."""
    out: dict[str, dict[str, str]] = {}
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        for row in s.scalars(select(ResourceTagRow).where(ResourceTagRow.project_id == prj.id)
                             .order_by(ResourceTagRow.key)):
            out.setdefault(row.resource_id, {})[row.key] = row.value
    return out


def retag(svc: Services, who: Principal, project: str | None, resource_id: str,
          add: dict[str, str], remove: dict[str, str | None]) -> None:
    """As instances.retag, for a resource of the project that the caller has checked."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = {r.key: r for r in s.scalars(select(ResourceTagRow).where(
            ResourceTagRow.resource_id == resource_id))}
        new = {k: r.value for k, r in rows.items()} | add
        for key, value in remove.items():
            if key in new and (value is None or new[key] == value):
                del new[key]
        tags(new)
        s.execute(delete(ResourceTagRow).where(ResourceTagRow.resource_id == resource_id))
        for key, value in new.items():
            s.add(ResourceTagRow(resource_id=resource_id, key=key, value=value,
                                 project_id=prj.id))


def forget(svc: Services, who: Principal, project: str | None, resource_id: str) -> None:
    retag(svc, who, project, resource_id, {}, {k: None for k in
                                               of(svc, who, project).get(resource_id, {})})
