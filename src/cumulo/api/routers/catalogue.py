"""Zones and instance types: what a user can choose from (images: images.py)."""

from __future__ import annotations

from fastapi import APIRouter

from cumulo.api.deps import Svc, Who
from cumulo.services import catalogue
from cumulo.services.views import InstanceTypeView, ZoneView

router = APIRouter(prefix="/v1", tags=["catalogue"])


@router.get("/zones")
def list_zones(svc: Svc, who: Who) -> list[ZoneView]:
    return catalogue.list_zones(svc, who)


@router.get("/instance-types")
def list_types(svc: Svc, who: Who) -> list[InstanceTypeView]:
    del who
    return catalogue.list_types(svc)
