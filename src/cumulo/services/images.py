"""Images: one name, one variant per architecture; public (project NULL) or per project."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cumulo.db.tables import ImageRow, ProjectRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import ImageVariantView, ImageView


def register_builtin(svc: Services, image_dir: Path) -> None:
    """Record (or refresh) a built-in image variant from a directory holding image.json.

    The directory is resolved first: built-in image dirs are symlinks swapped on rebuild, and
    instance overlays must keep pointing at the exact base disk they were made from.
    """
    image_dir = image_dir.resolve()
    meta = json.loads((image_dir / "image.json").read_text())
    arch = Arch.parse(meta["arch"]).value
    with svc.db.session() as s:
        row = s.scalar(
            select(ImageRow).where(
                ImageRow.name == meta["name"], ImageRow.project_id.is_(None), ImageRow.arch == arch
            )
        )
        if row is None:
            row = ImageRow(id=new_id("img"), name=meta["name"], project_id=None, arch=arch)
            s.add(row)
        row.boot = meta.get("boot", "kernel")
        row.default_user = meta.get("default_user", "cumulo")
        row.os = meta.get("os", "")
        row.disk_path = str(image_dir / "rootfs.qcow2")
        row.kernel_path = str(image_dir / "vmlinuz") if row.boot == "kernel" else None
        row.initrd_path = str(image_dir / "initrd.img") if row.boot == "kernel" else None
        row.kernel_cmdline = meta.get("kernel_cmdline", "")
        row.virtual_size_bytes = int(meta.get("virtual_size_bytes", 0))
        row.state = "available"


def _visible(s: Session, project: ProjectRow, name: str | None = None) -> list[ImageRow]:
    q = select(ImageRow).where(
        or_(ImageRow.project_id.is_(None), ImageRow.project_id == project.id)
    )
    if name is not None:
        q = q.where(ImageRow.name == name)
    return list(s.scalars(q.order_by(ImageRow.name, ImageRow.arch)))


def resolve_variant(s: Session, project: ProjectRow, name: str, arch: str) -> ImageRow:
    """The variant of image `name` for `arch`; the project's own image wins over a public one."""
    rows = _visible(s, project, name)
    if not rows:
        raise NotFound(f"unknown image {name!r}", code="unknown_image")
    own = [r for r in rows if r.project_id is not None]
    candidates = own or rows
    for row in candidates:
        if row.arch == arch:
            return row
    offered = ", ".join(sorted({r.arch for r in candidates}))
    raise InvalidInput(
        f"image {name!r} has no {arch} variant (it offers: {offered})", code="image_arch_mismatch"
    )


def _views(s: Session, rows: list[ImageRow]) -> list[ImageView]:
    grouped: dict[tuple[str, str | None], list[ImageRow]] = defaultdict(list)
    for r in rows:
        grouped[(r.name, r.project_id)].append(r)
    names = {p.id: p.name for p in s.scalars(select(ProjectRow))}
    out = []
    for (name, pid), variants in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        first = variants[0]
        out.append(
            ImageView(
                name=name,
                project=names.get(pid) if pid else None,
                os=first.os,
                default_user=first.default_user,
                architectures=[v.arch for v in variants],
                variants=[
                    ImageVariantView(
                        id=v.id,
                        arch=v.arch,
                        boot=v.boot,
                        virtual_size_bytes=v.virtual_size_bytes,
                        state=v.state,
                    )
                    for v in variants
                ],
            )
        )
    return out


def list_images(svc: Services, who: Principal, project: str | None) -> list[ImageView]:
    with svc.db.session() as s:
        return _views(s, _visible(s, scope_project(s, who, project)))


def show(svc: Services, who: Principal, project: str | None, name: str) -> ImageView:
    with svc.db.session() as s:
        rows = _visible(s, scope_project(s, who, project), name)
        if not rows:
            raise NotFound(f"unknown image {name!r}", code="unknown_image")
        views = _views(s, rows)
        own = [v for v in views if v.project is not None]
        return (own or views)[0]
