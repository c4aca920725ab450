"""Bare-metal nodes (admin only): enroll, list, show, retry, delete."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict, Forbidden, NotFound
from cumulo.services import baremetal_nodes as nodes
from cumulo.services.baremetal_nodes import NodeView

router = APIRouter(prefix="/v1/baremetal/nodes", tags=["bare metal"],
                   responses=raises(Forbidden))  # admins only


class NodeEnroll(Input):
    name: str
    zone: str
    redfish_url: str = Field(description="the BMC: http(s)://HOST[:PORT]")
    system: str = Field(description="the Redfish System's id or /redfish/v1/Systems/ID path")
    username: str | None = Field(default=None, description="the BMC's user")
    password: str | None = Field(default=None, description="stored sealed, never shown")
    arch: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    port_host: str | None = Field(default=None, description="the host its NIC is cabled to "
                                  "(its servers are on project networks through that host)")


@router.post("", status_code=201, responses=raises(Conflict, NotFound))
def enroll(svc: Svc, who: Who, body: NodeEnroll) -> NodeView:
    return nodes.enroll(svc, who, nodes.Enrollment(
        name=body.name, zone=body.zone, redfish_url=body.redfish_url, system=body.system,
        arch=body.arch, vcpus=body.vcpus, ram_mib=body.ram_mib, disk_gib=body.disk_gib,
        username=body.username, password=body.password, port_host=body.port_host))


@router.get("")
def list_nodes(svc: Svc, who: Who) -> list[NodeView]:
    return nodes.list_nodes(svc, who)


@router.get("/{name}", responses=raises(NotFound))
def show(svc: Svc, who: Who, name: str) -> NodeView:
    return nodes.show(svc, who, name)


@router.post("/{name}/retry", responses=raises(NotFound, Conflict))
def retry(svc: Svc, who: Who, name: str) -> NodeView:
    return nodes.retry(svc, who, name)


@router.delete("/{name}", status_code=202, responses=raises(NotFound, Conflict))
def delete(svc: Svc, who: Who, name: str) -> NodeView:
    return nodes.delete(svc, who, name)
