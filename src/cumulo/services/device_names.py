"""The device names EC2 clients attach volumes as (see db.tables.VolumeDeviceNameRow)."""

from __future__ import annotations

import re

from sqlalchemy import select

from cumulo.db.tables import VolumeDeviceNameRow
from cumulo.domain.errors import InvalidInput
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services

_DEVICE = re.compile(r"^/dev/[a-z0-9]{1,24}\Z")


def check(device: str) -> str:
    if not _DEVICE.match(device):
        raise InvalidInput(f"invalid device name {device!r} (e.g. /dev/sdf)",
                           code="invalid_device")
    return device


def remember(svc: Services, who: Principal, project: str | None, volume_id: str,
             device: str) -> None:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        s.merge(VolumeDeviceNameRow(volume_id=volume_id, project_id=prj.id, device=device))


def of(svc: Services, who: Principal, project: str | None) -> dict[str, str]:
    """volume id -> the device name it was last attached as."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        return dict(s.execute(select(VolumeDeviceNameRow.volume_id, VolumeDeviceNameRow.device)
                              .where(VolumeDeviceNameRow.project_id == prj.id)).all())
