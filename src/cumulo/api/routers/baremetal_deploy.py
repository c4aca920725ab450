"""What a bare-metal deploy fetches and reports (services.baremetal_deploy): the deploy ISO
(the BMC fetches it), the whole-disk image, the NoCloud seed and the report (the node's
deploy ramdisk). The
one-time token in the path is the only credential: a node being deployed has no other."""

from __future__ import annotations

import functools

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from cumulo.api.deps import Svc
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_seed

router = APIRouter(prefix=deploy.PREFIX, tags=["bare metal"], responses=raises(NotFound))
MAX_REPORT_BYTES = 4096


class _DiskResponse(FileResponse):
    chunk_size = 1 << 20


@router.get("/{token}/deploy.iso", response_class=Response,
            responses=raises(InvalidInput, Conflict))
async def deploy_iso(svc: Svc, token: str) -> Response:
    """The deploy ISO of this deploy (built on request, in about a second)."""
    iso = await to_thread.run_sync(functools.partial(deploy.iso, svc, token))
    return Response(iso, media_type="application/octet-stream",
                    headers={"cache-control": "no-store"})


@router.get("/{token}/image", response_class=FileResponse, responses=raises(InvalidInput))
async def image(svc: Svc, token: str) -> Response:
    """The whole-disk image the deploy writes (gzipped raw; its sha256 is on the deploy
    ramdisk's command line, which checks it before writing a byte)."""
    path = await to_thread.run_sync(functools.partial(deploy.image_file, svc, token))
    return _DiskResponse(path, media_type="application/octet-stream",
                         headers={"cache-control": "no-store"})


@router.get("/{token}/seed", response_class=Response)
async def seed(svc: Svc, token: str) -> Response:
    """The instance's cloud-init NoCloud seed (an ISO 9660 volume labelled `cidata`, as a VM
    of this instance gets it), which the deploy ramdisk writes to a partition of the disk."""
    iso = await to_thread.run_sync(functools.partial(baremetal_seed.seed_iso, svc, token))
    return Response(iso, media_type="application/octet-stream",
                    headers={"cache-control": "no-store"})


@router.post("/{token}/report", status_code=204, responses=raises(InvalidInput, Conflict))
async def report(svc: Svc, token: str, request: Request) -> Response:
    """The deploy ramdisk's result: the body is `ok` or `error=<why>` (as busybox wget
    --post-data sends it)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REPORT_BYTES:
            raise InvalidInput("invalid deploy report: too long", code="invalid_deploy_report")
    await to_thread.run_sync(functools.partial(deploy.report, svc, token, body))
    return Response(status_code=204)
