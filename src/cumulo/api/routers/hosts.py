"""Hypervisor hosts (admin only): list, show, disable, enable."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Forbidden
from cumulo.services import host_admin
from cumulo.services.views import HostView

router = APIRouter(prefix="/v1/hosts", tags=["hosts"],
                   responses=raises(Forbidden))  # admins only


class HostDisable(Input):
    reason: str = Field(default="", description="why (shown in `host list`)")


@router.get("")
def list_hosts(svc: Svc, who: Who) -> list[HostView]:
    return host_admin.list_hosts(svc, who)


@router.get("/{name}")
def show(svc: Svc, who: Who, name: str) -> HostView:
    return host_admin.show(svc, who, name)


@router.post("/{name}/disable")
def disable(svc: Svc, who: Who, name: str, body: HostDisable) -> HostView:
    return host_admin.set_disabled(svc, who, name, True, body.reason)


@router.post("/{name}/enable")
def enable(svc: Svc, who: Who, name: str) -> HostView:
    return host_admin.set_disabled(svc, who, name, False)
