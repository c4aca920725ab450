"""Live migrations (admins only): list, show, cancel. Started by POST /v1/instances/REF/migrate."""

from __future__ import annotations

from fastapi import APIRouter

from cumulo.api.deps import Svc, Who
from cumulo.api.openapi import raises
from cumulo.api.threads import service
from cumulo.domain.errors import Conflict, Forbidden, NotFound
from cumulo.services import host_drain, host_evacuate, migrations
from cumulo.services.host_drain import DrainView
from cumulo.services.host_evacuate import EvacuationView
from cumulo.services.migrations import MigrationView

router = APIRouter(prefix="/v1/migrations", tags=["migrations"],
                   responses=raises(Forbidden))  # admins only


host_router = APIRouter(prefix="/v1/hosts", tags=["hosts"], responses=raises(Forbidden))


@host_router.post("/{name}/drain", responses=raises(NotFound))
async def drain(svc: Svc, who: Who, name: str) -> DrainView:
    """Disable the host and move its instances off it, a few at a time: running ones live,
    stopped ones cold."""
    return await service(svc, host_drain.drain, svc, who, name)


@host_router.post("/{name}/evacuate", responses=raises(NotFound, Conflict))
async def evacuate(svc: Svc, who: Who, name: str) -> EvacuationView:
    """Restart the instances of a host that is down on other hosts of its zone. Their boot
    disks are not recovered (they were on the host): each starts from a new one made from
    its image. What cannot move is listed with why, and stays."""
    return await service(svc, host_evacuate.evacuate, svc, who, name)


@router.get("")
async def list_migrations(svc: Svc, who: Who) -> list[MigrationView]:
    return await service(svc, migrations.list_all, svc, who)


@router.get("/{ref}", responses=raises(NotFound))
async def show(svc: Svc, who: Who, ref: str) -> MigrationView:
    return await service(svc, migrations.show, svc, who, ref)


@router.post("/{ref}/cancel", responses=raises(NotFound, Conflict))
async def cancel(svc: Svc, who: Who, ref: str) -> MigrationView:
    """Cancel before the switch-over: the instance runs on where it was."""
    return await service(svc, migrations.cancel, svc, who, ref)
