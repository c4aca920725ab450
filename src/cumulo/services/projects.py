"""Projects: every resource belongs to one. Admin only."""

from __future__ import annotations

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select

from cumulo.db.tables import (
    EventRow,
    InstanceRow,
    KeyPairRow,
    NetworkRow,
    ProjectRow,
    PublicIpRow,
    SecurityGroupRow,
    TokenRow,
)
from cumulo.domain.errors import Conflict, Forbidden, NotFound, Unauthorized
from cumulo.domain.ids import new_id
from cumulo.domain.validation import dns_label
from cumulo.services import metering
from cumulo.services.auth import DEFAULT_PROJECT, issue_token, require_admin
from cumulo.services.context import Principal, Role, Services
from cumulo.services.views import Caller, CreatedToken, ProjectView


def _view(row: ProjectRow) -> ProjectView:
    return ProjectView(id=row.id, name=row.name, created_at=row.created_at)


def whoami(svc: Services, who: Principal) -> Caller:
    """The caller's role and project (None for an admin: any project)."""
    if who.role in (Role.AGENT, Role.EDGE):
        raise Forbidden(f"{who.role.value} tokens cannot use the user API")
    if who.is_admin:
        return Caller(role=who.role.value, project=None)
    with svc.db.session() as s:
        row = s.get(ProjectRow, who.project_id)
        if row is None:
            raise Unauthorized("the token's project no longer exists")
        return Caller(role=who.role.value, project=row.name)


def create(svc: Services, who: Principal, name: str) -> ProjectView:
    require_admin(who)
    dns_label(name, "project name")
    with svc.db.session() as s:
        if s.scalar(select(ProjectRow).where(ProjectRow.name == name)) is not None:
            raise Conflict(f"project {name!r} already exists", code="name_taken")
        row = ProjectRow(id=new_id("prj"), name=name)
        s.add(row)
        s.flush()
        return _view(row)


def list_all(svc: Services, who: Principal) -> list[ProjectView]:
    require_admin(who)
    with svc.db.session() as s:
        return [_view(r) for r in s.scalars(select(ProjectRow).order_by(ProjectRow.name))]


def delete(svc: Services, who: Principal, name: str) -> None:
    require_admin(who)
    with svc.db.session() as s:
        row = s.scalar(select(ProjectRow).where(ProjectRow.name == name))
        if row is None:
            raise NotFound(f"project {name!r} does not exist", code="unknown_project")
        if name == DEFAULT_PROJECT:
            raise Conflict("the default project cannot be deleted", code="protected")
        count = s.scalar(select(func.count()).where(InstanceRow.project_id == row.id)) or 0
        if count:
            raise Conflict(
                f"project {name!r} still has {count} instance(s); delete them first",
                code="project_not_empty",
            )
        # Everything else the project owns goes with it (no instance uses any of it any more).
        metering.end_project(s, metering.now(svc), row.id)
        for table in (TokenRow, NetworkRow, KeyPairRow, PublicIpRow, SecurityGroupRow, EventRow):
            s.execute(sa_delete(table).where(table.project_id == row.id))
        s.delete(row)


def create_member_token(svc: Services, who: Principal, name: str) -> CreatedToken:
    """A token that acts only inside project `name` (what a tenant would be handed)."""
    require_admin(who)
    with svc.db.session() as s:
        row = s.scalar(select(ProjectRow).where(ProjectRow.name == name))
        if row is None:
            raise NotFound(f"project {name!r} does not exist", code="unknown_project")
        return CreatedToken(token=issue_token(s, Role.MEMBER, project_id=row.id))
