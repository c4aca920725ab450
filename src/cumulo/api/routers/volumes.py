"""Block volumes and snapshots. Mutations return 202: the host agent converges to them."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict, InsufficientCapacity, NotFound
from cumulo.services import volumes
from cumulo.services.views import SnapshotView, VolumeView

router = APIRouter(prefix="/v1", tags=["volumes"])


class VolumeCreate(Input):
    name: str
    size_gib: int
    zone: str | None = None
    type: str = "standard"
    from_snapshot: str | None = None
    delete_on_termination: bool = False


class VolumeAttach(Input):
    instance: str


class VolumeResize(Input):
    size_gib: int = Field(description="the new, larger size")


class SnapshotCreate(Input):
    name: str


@router.post("/volumes", status_code=202,
             responses=raises(NotFound, Conflict, InsufficientCapacity))
def create(svc: Svc, who: Who, body: VolumeCreate, project: str | None = None) -> VolumeView:
    return volumes.create(svc, who, project, body.name, body.size_gib, body.zone, body.type,
                          body.from_snapshot, body.delete_on_termination)


@router.get("/volumes")
def list_all(svc: Svc, who: Who, project: str | None = None) -> list[VolumeView]:
    return volumes.list_all(svc, who, project)


@router.get("/volumes/{ref}")
def show(svc: Svc, who: Who, ref: str, project: str | None = None) -> VolumeView:
    return volumes.show(svc, who, project, ref)


@router.post("/volumes/{ref}/attach", status_code=202, responses=raises(Conflict))
def attach(svc: Svc, who: Who, ref: str, body: VolumeAttach,
           project: str | None = None) -> VolumeView:
    return volumes.attach(svc, who, project, ref, body.instance)


@router.post("/volumes/{ref}/detach", status_code=202, responses=raises(Conflict))
def detach(svc: Svc, who: Who, ref: str, project: str | None = None) -> VolumeView:
    return volumes.detach(svc, who, project, ref)


@router.post("/volumes/{ref}/resize", status_code=202, responses=raises(Conflict))
def resize(svc: Svc, who: Who, ref: str, body: VolumeResize,
           project: str | None = None) -> VolumeView:
    return volumes.resize(svc, who, project, ref, body.size_gib)


@router.delete("/volumes/{ref}", status_code=202, responses=raises(Conflict))
def delete(svc: Svc, who: Who, ref: str, project: str | None = None) -> VolumeView:
    return volumes.delete(svc, who, project, ref)


@router.post("/volumes/{ref}/snapshots", status_code=202, responses=raises(Conflict))
def snapshot(svc: Svc, who: Who, ref: str, body: SnapshotCreate,
             project: str | None = None) -> SnapshotView:
    return volumes.snapshot(svc, who, project, ref, body.name)


@router.get("/snapshots")
def list_snapshots(svc: Svc, who: Who, project: str | None = None) -> list[SnapshotView]:
    return volumes.list_snapshots(svc, who, project)


@router.delete("/snapshots/{ref}", status_code=204, responses=raises(Conflict))
def delete_snapshot(svc: Svc, who: Who, ref: str, project: str | None = None) -> Response:
    volumes.delete_snapshot(svc, who, project, ref)
    return Response(status_code=204)
