"""The image store's side of the hosts' image caches: which file of the API's machine an agent
may fetch (by image id and role, never by path), and which cached images are gone from the
catalogue. Neither is on the hot path: a host asks once per image it lacks, and now and then
about the images it holds unused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from cumulo.db.tables import HostRow, ImageRow, InstanceRow, MigrationRow
from cumulo.domain.errors import Forbidden, InvalidInput, NotFound
from cumulo.domain.ids import is_id
from cumulo.protocol import IMAGE_FILES
from cumulo.services.auth import require_agent
from cumulo.services.context import Principal, Services

MAX_HELD = 10_000  # image ids in one question about a host's cache


@dataclass(frozen=True)
class ServedFile:
    path: Path  # on the API's machine: opened here, never sent
    size: int
    sha256: str


def file_for(svc: Services, who: Principal, host: str, image_id: str, role: str) -> ServedFile:
    """The file `role` of image `image_id`, for host `host`'s agent: only an image one of the
    host's instances uses (a host sees no other project's images)."""
    require_agent(who, host)
    if role not in IMAGE_FILES:
        raise InvalidInput(f"unknown image file {role!r} ({', '.join(IMAGE_FILES)})",
                           code="invalid_input")
    if not is_id(image_id):
        raise InvalidInput(f"malformed image id {image_id!r}", code="invalid_input")
    with svc.db.session() as s:
        row = s.get(ImageRow, image_id)
        if row is None:
            raise NotFound(f"unknown image {image_id!r}", code="unknown_image")
        used = s.scalar(select(InstanceRow.id)
                        .join(HostRow, HostRow.id == InstanceRow.host_id)
                        .where(HostRow.name == host, InstanceRow.image_id == image_id)
                        .limit(1))
        if used is None:  # or one arriving there (live migration): its kernel is needed
            used = s.scalar(select(MigrationRow.id)
                            .join(InstanceRow, InstanceRow.id == MigrationRow.instance_id)
                            .join(HostRow, HostRow.id == MigrationRow.destination_host_id)
                            .where(HostRow.name == host, MigrationRow.active,
                                   InstanceRow.image_id == image_id).limit(1))
        if used is None and not who.is_admin:
            raise Forbidden(f"host {host!r} runs no instance of image {image_id}",
                            code="image_not_assigned")
        path, size, sha = (getattr(row, f"{role}_path"), getattr(row, f"{role}_size"),
                           getattr(row, f"{role}_sha256"))
    if not path or not sha:
        raise NotFound(f"image {image_id} has no {role} file", code="unknown_image")
    if not Path(path).is_file():  # the operator removed it: say so rather than fail
        raise NotFound(f"the {role} of image {image_id} is missing from the image store",
                       code="image_file_missing")
    return ServedFile(Path(path), int(size), sha)


def gone(svc: Services, who: Principal, host: str, held: list[str]) -> list[str]:
    """Of the image ids a host holds in its cache, those no longer in the catalogue."""
    require_agent(who, host)
    if len(held) > MAX_HELD:
        raise InvalidInput(f"at most {MAX_HELD} image ids at once", code="invalid_input")
    ids = [i for i in held if is_id(i)]
    with svc.db.session() as s:
        known = set(s.scalars(select(ImageRow.id).where(ImageRow.id.in_(ids)))) if ids else set()
    return sorted(set(held) - known)
