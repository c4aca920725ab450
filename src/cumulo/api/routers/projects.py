"""Projects (admin only), and who a token is."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict, Forbidden
from cumulo.services import projects
from cumulo.services.views import Caller, CreatedToken, ProjectView

router = APIRouter(prefix="/v1/projects", tags=["projects"],
                   responses=raises(Forbidden))  # admins only
whoami_router = APIRouter(prefix="/v1", tags=["projects"])


@whoami_router.get("/whoami", responses=raises(Forbidden))
def whoami(svc: Svc, who: Who) -> Caller:
    """The caller's role and project: what the web console signs in with."""
    return projects.whoami(svc, who)


class ProjectCreate(Input):
    name: str


@router.post("", status_code=201, responses=raises(Conflict))
def create(svc: Svc, who: Who, body: ProjectCreate) -> ProjectView:
    return projects.create(svc, who, body.name)


@router.get("")
def list_all(svc: Svc, who: Who) -> list[ProjectView]:
    return projects.list_all(svc, who)


@router.delete("/{name}", status_code=204, responses=raises(Conflict))
def delete(svc: Svc, who: Who, name: str) -> Response:
    projects.delete(svc, who, name)
    return Response(status_code=204)


@router.post("/{name}/tokens", status_code=201)
def create_token(svc: Svc, who: Who, name: str) -> CreatedToken:
    return projects.create_member_token(svc, who, name)
