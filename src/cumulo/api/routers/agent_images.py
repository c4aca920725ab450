"""The image store, for host agents (their host token): image files by id (HTTP ranges, so
an interrupted transfer resumes), which cached images are gone, and the disks of
`image create-from-instance` that agents export and upload. None of it is on the hot path."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from cumulo.api.deps import Svc, Who
from cumulo.api.openapi import raises
from cumulo.api.routers.images import receive_image
from cumulo.api.threads import long_job, service
from cumulo.domain.errors import Conflict, Forbidden
from cumulo.images.qemu_img import ImageTooLarge, ImageToolError, InsufficientStorage
from cumulo.services import image_exports, image_files
from cumulo.services.image_import import StoreUnavailable
from cumulo.services.views import ImageView

router = APIRouter(prefix="/v1/agent/hosts", tags=["agent"], responses=raises(Forbidden))


class _ImageFileResponse(FileResponse):
    chunk_size = 1 << 20  # starlette's 64 KiB costs a send per 64 KiB of a GiB image


@router.get("/{name}/images/{image_id}/{role}", response_class=FileResponse)
async def image_file(svc: Svc, who: Who, name: str, image_id: str, role: str) -> Response:
    """The file `role` (disk | kernel | initrd) of an image one of the host's instances uses.
    `Range: bytes=N-` (with `If-Range: "<sha256>"`) resumes a transfer; the ETag and
    X-Cumulo-Sha256 are the sha256 the catalogue has."""
    f = await service(svc, image_files.file_for, svc, who, name, image_id, role)
    return _ImageFileResponse(f.path, media_type="application/octet-stream", headers={
        "etag": f'"{f.sha256}"', "x-cumulo-sha256": f.sha256, "cache-control": "no-store"})


class Held(BaseModel):
    held: list[str] = Field(max_length=image_files.MAX_HELD)


class Gone(BaseModel):
    gone: list[str]


@router.post("/{name}/images/gone")
async def images_gone(svc: Svc, who: Who, name: str, body: Held) -> Gone:
    """Of the image ids the host caches, those gone from the catalogue (to delete)."""
    return Gone(gone=await service(svc, image_files.gone, svc, who, name, body.held))


class ExportStatus(BaseModel):
    state: Literal["running", "failed"]
    code: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=2000)


@router.post("/{name}/exports/{export_id}/status", status_code=204,
             responses=raises(Conflict))
async def export_status(svc: Svc, who: Who, name: str, export_id: str,
                        body: ExportStatus) -> Response:
    """The agent took the export (running), or says why it could not (failed)."""
    await service(svc, image_exports.report, svc, who, name, export_id, body.state,
                  body.code, body.reason)
    return Response(status_code=204)


@router.put("/{name}/exports/{export_id}", status_code=201,
            responses=raises(Conflict, ImageTooLarge, InsufficientStorage, StoreUnavailable,
                             ImageToolError))
async def export_upload(request: Request, svc: Svc, who: Who, name: str,
                        export_id: str) -> ImageView:
    """The exported disk (a standalone qcow2) as the body: checked like an import and
    recorded as the new image, the export done."""
    target = await service(svc, image_exports.target_of_upload, svc, who, name, export_id)
    staged = await receive_image(request, svc)
    return await long_job(image_exports.record_upload, svc, export_id, target, staged)
