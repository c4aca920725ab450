"""Dedicated hosts: whole hypervisor hosts reserved for one project."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict, Forbidden, InsufficientCapacity, QuotaExceeded
from cumulo.services import dedicated_hosts
from cumulo.services.views import DedicatedHostView

router = APIRouter(prefix="/v1/dedicated-hosts", tags=["dedicated hosts"])


class DedicatedHostAllocate(Input):
    zone: str
    host: str | None = Field(default=None, description="a host's name (admins only); "
                             "default: an empty enabled host of the zone")


@router.post("", status_code=201,
             responses=raises(Conflict, Forbidden, InsufficientCapacity, QuotaExceeded))
def allocate(svc: Svc, who: Who, body: DedicatedHostAllocate,
             project: str | None = None) -> DedicatedHostView:
    return dedicated_hosts.allocate(svc, who, project, body.zone, body.host)


@router.get("")
def list_all(svc: Svc, who: Who, project: str | None = None) -> list[DedicatedHostView]:
    return dedicated_hosts.list_all(svc, who, project)


@router.get("/{ref}", responses=raises(Forbidden))
def show(svc: Svc, who: Who, ref: str, project: str | None = None) -> DedicatedHostView:
    return dedicated_hosts.show(svc, who, project, ref)


@router.post("/{ref}/release", responses=raises(Conflict, Forbidden))
def release(svc: Svc, who: Who, ref: str, project: str | None = None) -> DedicatedHostView:
    return dedicated_hosts.release(svc, who, project, ref)
