"""Placement groups: a project's instances kept apart (spread) or together (cluster)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict
from cumulo.services import placement_groups
from cumulo.services.views import PlacementGroupView

router = APIRouter(prefix="/v1/placement-groups", tags=["placement groups"])


class PlacementGroupCreate(Input):
    name: str
    strategy: str = Field(description="spread (each instance on another host) or cluster")


@router.post("", status_code=201, responses=raises(Conflict))
def create(svc: Svc, who: Who, body: PlacementGroupCreate,
           project: str | None = None) -> PlacementGroupView:
    return placement_groups.create(svc, who, project, body.name, body.strategy)


@router.get("")
def list_all(svc: Svc, who: Who, project: str | None = None) -> list[PlacementGroupView]:
    return placement_groups.list_all(svc, who, project)


@router.delete("/{name}", status_code=204, responses=raises(Conflict))
def delete(svc: Svc, who: Who, name: str, project: str | None = None) -> Response:
    placement_groups.delete(svc, who, project, name)
    return Response(status_code=204)
