"""Instances: the lifecycle. Mutations return 202 with the resource; agents converge later."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from pydantic import Field

from cumulo.api import console as console_log
from cumulo.api.deps import Creates, Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.api.threads import service
from cumulo.domain.errors import (
    Conflict,
    Forbidden,
    InsufficientCapacity,
    NotFound,
    QuotaExceeded,
)
from cumulo.domain.instance import Action
from cumulo.domain.validation import base64_user_data
from cumulo.services import baremetal_instances, instance_check, instances, migrations
from cumulo.services import instance_events as instance_event_log
from cumulo.services.migrations import MigrationView
from cumulo.services.views import EventView, InstanceView

router = APIRouter(prefix="/v1/instances", tags=["instances"])


class InstanceCreate(Input):
    name: str = Field(description="a DNS label, unique in the project")
    image: str
    type: str | None = None
    vcpus: int | None = None
    ram_mib: int | None = None
    bandwidth_mbps: int | None = None
    disk_gib: int | None = None
    arch: str = "x86_64"
    zone: str | None = None
    user_data: str | None = Field(default=None, description="base64 of the user-data (<= 64 KiB)")
    tags: dict[str, str] = Field(default_factory=dict)
    keys: list[str] = Field(default_factory=list, description="key pair names")
    security_groups: list[str] = Field(default_factory=list, description="default: ['default']")
    network: str | None = Field(default=None, description="default: the zone's default network")
    private_ip: str | None = None
    placement_group: str | None = Field(default=None, description="a placement group's name")
    tenancy: str | None = Field(default=None, description="shared (default) or dedicated: on "
                                "a host dedicated to the project")
    dedicated_host: str | None = Field(default=None, description="the id of one of the "
                                       "project's dedicated hosts (implies dedicated tenancy)")
    client_token: str | None = Field(
        default=None, description="sent again with the same parameters (the answer was lost),"
        " the create answers the instance it made, once (1 to 64 printable ASCII characters)")


def _request(body: InstanceCreate) -> instances.CreateInstance:
    return instances.CreateInstance(
        name=body.name,
        image=body.image,
        type=body.type,
        vcpus=body.vcpus,
        ram_mib=body.ram_mib,
        bandwidth_mbps=body.bandwidth_mbps,
        disk_gib=body.disk_gib,
        arch=body.arch,
        zone=body.zone,
        user_data=base64_user_data(body.user_data),
        tags=body.tags,
        keys=body.keys,
        security_groups=body.security_groups,
        network=body.network,
        private_ip=body.private_ip,
        placement_group=body.placement_group,
        tenancy=body.tenancy,
        dedicated_host=body.dedicated_host,
        client_token=body.client_token,
    )


_CREATE_ERRORS = raises(NotFound, Conflict, InsufficientCapacity, QuotaExceeded)


@router.post("", status_code=202, responses=_CREATE_ERRORS)
async def create(creates: Creates, who: Who, body: InstanceCreate,
                 project: str | None = None) -> InstanceView:
    return await creates.create(instances.CreateCall(who, project, _request(body)))


@router.post("/validate", status_code=204, responses=_CREATE_ERRORS)
async def validate(svc: Svc, who: Who, body: InstanceCreate,
                   project: str | None = None) -> Response:
    """Check a create without creating anything: 204, or the error the create would give."""
    await service(svc, instance_check.check_create, svc, who, project, _request(body))
    return Response(status_code=204)


@router.get("")
def list_all(svc: Svc, who: Who, project: str | None = None) -> list[InstanceView]:
    return instances.list_all(svc, who, project)


@router.get("/{ref}")
async def show(svc: Svc, who: Who, ref: str, project: str | None = None) -> InstanceView:
    return await service(svc, instances.get, svc, who, project, ref)


def _action(action: Action) -> object:
    async def handler(svc: Svc, who: Who, ref: str, project: str | None = None
                      ) -> InstanceView:
        return await service(svc, instances.act, svc, who, project, ref, action)

    handler.__name__ = f"{action.value}_instance"
    return handler


for _act in (Action.START, Action.STOP, Action.REBOOT):
    router.add_api_route(
        f"/{{ref}}/{_act.value}",
        _action(_act),  # type: ignore[arg-type]
        methods=["POST"],
        status_code=202,
        responses=raises(Conflict),
    )


@router.delete("/{ref}", status_code=202, responses=raises(Conflict))
async def delete(svc: Svc, who: Who, ref: str, project: str | None = None) -> InstanceView:
    return await service(svc, instances.act, svc, who, project, ref, Action.DELETE)


class InstanceMigrate(Input):
    to: str | None = Field(default=None, description="a host of the instance's zone (default: "
                           "the scheduler picks, with the filters of a create)")


@router.post("/{ref}/migrate", status_code=202,
             responses=raises(Forbidden, NotFound, Conflict, InsufficientCapacity))
async def migrate(svc: Svc, who: Who, ref: str, body: InstanceMigrate,
                  project: str | None = None) -> MigrationView:
    """Move the instance to another host of its zone (admins): live while it runs, cold
    (its disk copied and checked) when it is stopped."""
    await service(svc, baremetal_instances.refuse_migration, svc, who, project, ref)
    return await service(svc, migrations.start, svc, who, project, ref, body.to)


@router.get("/{ref}/events", responses=raises(NotFound))
async def instance_events(svc: Svc, who: Who, ref: str, project: str | None = None
                          ) -> list[EventView]:
    """The instance's event log, oldest first (users see no host names)."""
    return await service(svc, instance_event_log.list_for, svc, who, project, ref)


@router.get("/{ref}/console", response_class=PlainTextResponse, responses=raises(Conflict))
async def console(svc: Svc, who: Who, ref: str, project: str | None = None) -> Response:
    """The serial console log, fetched from the instance's host agent."""
    target = await service(svc, instances.console_target, svc, who, project, ref)
    return PlainTextResponse(await console_log.fetch(target))
