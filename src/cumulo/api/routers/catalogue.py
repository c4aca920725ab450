"""Zones, instance types, images: what a user can choose from."""

from __future__ import annotations

from fastapi import APIRouter

from cumulo.api.deps import Svc, Who
from cumulo.services import catalogue, images
from cumulo.services.views import ImageView, InstanceTypeView, ZoneView

router = APIRouter(prefix="/v1", tags=["catalogue"])


@router.get("/zones")
def list_zones(svc: Svc, who: Who) -> list[ZoneView]:
    return catalogue.list_zones(svc, who)


@router.get("/instance-types")
def list_types(svc: Svc, who: Who) -> list[InstanceTypeView]:
    del who
    return catalogue.list_types(svc)


@router.get("/images")
def list_images(svc: Svc, who: Who, project: str | None = None) -> list[ImageView]:
    return images.list_images(svc, who, project)


@router.get("/images/{name}")
def show_image(svc: Svc, who: Who, name: str, project: str | None = None) -> ImageView:
    return images.show(svc, who, project, name)
