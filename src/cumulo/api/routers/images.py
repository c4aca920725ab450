"""Images: list, show, import (upload or URL), create from an instance, delete.

Imports are synchronous: the response (201) comes once the image is checked, converted and
stored. A refused import changes nothing. Their slow part runs in the API's long-job pool
(cumulo.api.threads), not in the few worker threads every other request needs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.api.threads import long_job
from cumulo.domain.errors import Conflict, Forbidden
from cumulo.domain.validation import DEFAULT_MIN_RAM_MIB
from cumulo.images.qemu_img import ImageTooLarge, ImageToolError, InsufficientStorage
from cumulo.services import image_import, images
from cumulo.services.image_import import DownloadFailed, StoreUnavailable
from cumulo.services.views import ImageView

router = APIRouter(prefix="/v1", tags=["images"])
# What an import can answer besides the checks of every request: a public image by a member
# (403), the name taken (409), too large (413), no room (507), no image store (503), and
# qemu-img failing on its own (500).
_STORING = (Forbidden, Conflict, ImageTooLarge, InsufficientStorage, StoreUnavailable,
            ImageToolError)
_BATCH = 1 << 20

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image file itself (qcow2 or raw), as the raw request body.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class ImportUrl(Input):
    name: str
    url: str = Field(description="http:// or https:// URL the API server downloads")
    arch: str
    boot: str | None = Field(default=None, description="bios | uefi (default: bios on x86_64, "
                             "uefi on arm64); kernel is not supported for imports")
    default_user: str = "root"
    os: str = ""
    public: bool = Field(default=False, description="a public image (admins only)")
    min_ram_mib: int = Field(default=DEFAULT_MIN_RAM_MIB,
                             description="the least RAM (MiB) an instance of it may have")


class FromInstance(Input):
    name: str
    instance: str = Field(description="name or id of a stopped instance of the project")


@router.get("/images")
def list_images(svc: Svc, who: Who, project: str | None = None) -> list[ImageView]:
    return images.list_images(svc, who, project)


@router.get("/images/{name}")
def show_image(svc: Svc, who: Who, name: str, project: str | None = None) -> ImageView:
    return images.show(svc, who, project, name)


@router.put(
    "/images/{name}/upload",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    responses=raises(*_STORING),
)
async def upload_image(
    request: Request,
    svc: Svc,
    who: Who,
    name: str,
    arch: Annotated[str, Query(description="x86_64 | arm64")],
    boot: Annotated[str | None, Query(description="bios | uefi")] = None,
    default_user: str = "root",
    os: str = "",
    public: bool = False,
    min_ram_mib: int = DEFAULT_MIN_RAM_MIB,
    project: str | None = None,
) -> ImageView:
    """Import an image from the request body (what `cumulo image import NAME FILE` sends)."""
    req = image_import.ImportRequest(
        name=name, arch=arch, boot=boot, default_user=default_user, os=os, public=public,
        min_ram_mib=min_ram_mib,
    )
    target = await run_in_threadpool(image_import.plan, svc, who, project, req)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > image_import.max_bytes(svc):
        raise image_import.too_large(svc)
    staged_path = await run_in_threadpool(image_import.staging_path, svc)
    staged = await run_in_threadpool(image_import.StagedFile, svc, staged_path)
    try:
        batch = bytearray()
        async for chunk in request.stream():
            batch += chunk
            if len(batch) >= _BATCH:  # disk writes happen off the event loop, 1 MiB at a time
                await run_in_threadpool(staged.write, bytes(batch))
                batch.clear()
        if batch:
            await run_in_threadpool(staged.write, bytes(batch))
        await run_in_threadpool(staged.close)
    except BaseException:
        staged.abort()
        raise
    return await long_job(image_import.import_staged, svc, target, staged_path)


@router.post("/images", status_code=201, responses=raises(*_STORING, DownloadFailed))
async def import_from_url(svc: Svc, who: Who, body: ImportUrl,
                          project: str | None = None) -> ImageView:
    """Import an image the API server downloads from an http(s) URL."""
    req = image_import.ImportRequest(
        name=body.name, arch=body.arch, boot=body.boot, default_user=body.default_user,
        os=body.os, public=body.public, min_ram_mib=body.min_ram_mib,
    )
    return await long_job(image_import.import_url, svc, who, project, req, body.url)


@router.post("/images/from-instance", status_code=201, responses=raises(*_STORING))
async def create_from_instance(
    svc: Svc, who: Who, body: FromInstance, project: str | None = None
) -> ImageView:
    """A new image of the project from a stopped instance's boot disk."""
    return await long_job(image_import.create_from_instance, svc, who, project, body.name,
                          body.instance)


@router.delete("/images/{name}", status_code=204, responses=raises(Conflict))
def delete_image(
    svc: Svc,
    who: Who,
    name: str,
    arch: str | None = None,
    public: bool = False,
    project: str | None = None,
) -> Response:
    """Delete the project's image NAME (or, with public=true, the public one: admins only).
    Refused (409 image_in_use) while an instance uses it."""
    images.delete(svc, who, project, name, arch=arch, public=public)
    return Response(status_code=204)

