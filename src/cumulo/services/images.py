"""Images: one name, one variant per architecture; public (project NULL) or per project.

Imports (upload, URL, from an instance) are in image_import.py; this module lists, resolves
and deletes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session

from cumulo.db.tables import ImageRow, InstanceRow, ProjectRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.validation import DEFAULT_MIN_RAM_MIB
from cumulo.images.digest import file_digest
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.hosts import lock_zone
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
        # Two API processes starting together must not both insert it (a NULL project makes
        # the unique constraint blind on PostgreSQL). '#' is in no zone name.
        lock_zone(s, "#builtin-images")
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
        kernel_boot = row.boot == "kernel"
        record_files(row, image_dir / "rootfs.qcow2",
                     image_dir / "vmlinuz" if kernel_boot else None,
                     image_dir / "initrd.img" if kernel_boot else None)
        row.kernel_cmdline = meta.get("kernel_cmdline", "")
        row.virtual_size_bytes = int(meta.get("virtual_size_bytes", 0))
        row.min_ram_mib = int(meta.get("min_ram_mib", DEFAULT_MIN_RAM_MIB))
        row.state = "available"


def record_files(row: ImageRow, disk: Path, kernel: Path | None, initrd: Path | None) -> None:
    """Point the row at its files (on this machine) and record their size and sha256, which
    hosts check what they fetch against. A built-in image's directory never changes once
    built (a rebuild makes a new one), so unchanged paths keep their digests: `cumulo up`
    hashes only what is new."""
    for role, path in (("disk", disk), ("kernel", kernel), ("initrd", initrd)):
        text = str(path) if path is not None else None
        known = getattr(row, f"{role}_path") == text and getattr(row, f"{role}_sha256")
        setattr(row, f"{role}_path", text)
        if known:
            continue
        size, sha = file_digest(path) if path is not None else (0, "")
        setattr(row, f"{role}_size", size)
        setattr(row, f"{role}_sha256", sha)


# The images a project sees (public ones and its own), built once: every create resolves one.
_VISIBLE = (select(ImageRow)
            .where(or_(ImageRow.project_id.is_(None), ImageRow.project_id == bindparam("project")))
            .order_by(ImageRow.name, ImageRow.arch))
_VISIBLE_NAMED = _VISIBLE.where(ImageRow.name == bindparam("name"))


def _visible(s: Session, project: ProjectRow, name: str | None = None) -> list[ImageRow]:
    if name is None:
        return list(s.scalars(_VISIBLE, {"project": project.id}))
    return list(s.scalars(_VISIBLE_NAMED, {"project": project.id, "name": name}))


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
                        min_ram_mib=v.min_ram_mib,
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


def view_of(s: Session, project_id: str | None, name: str) -> ImageView:
    """The view of image `name` owned by `project_id` (None: the public one)."""
    q = select(ImageRow).where(ImageRow.name == name)
    q = q.where(ImageRow.project_id.is_(None) if project_id is None
                else ImageRow.project_id == project_id)
    rows = list(s.scalars(q.order_by(ImageRow.arch)))
    if not rows:
        raise NotFound(f"unknown image {name!r}", code="unknown_image")
    return _views(s, rows)[0]


def variant_exists(s: Session, project_id: str | None, name: str, arch: str) -> bool:
    q = select(ImageRow.id).where(ImageRow.name == name, ImageRow.arch == arch)
    q = q.where(ImageRow.project_id.is_(None) if project_id is None
                else ImageRow.project_id == project_id)
    return s.scalar(q) is not None


def in_store(svc: Services, path: Path) -> bool:
    """True when `path` is a file of the image store (built-in images live elsewhere)."""
    if svc.image_store is None:
        return False
    return path.resolve().parent == svc.image_store.resolve()


def delete(
    svc: Services,
    who: Principal,
    project: str | None,
    name: str,
    *,
    arch: str | None = None,
    public: bool = False,
) -> None:
    """Delete image `name` (all its variants, or the `arch` one): the project's own image, or
    with `public` (or when the project has none of that name) the public one (admins only).
    Refused while any instance uses a variant. Files in the image store are removed; built-in
    images' files are left alone."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = _visible(s, prj, name)
        own = [r for r in rows if r.project_id == prj.id]
        shared = [r for r in rows if r.project_id is None]
        targets = shared if public or not own else own
        if arch is not None:
            wanted = Arch.parse(arch).value
            targets = [r for r in targets if r.arch == wanted]
        if not targets:
            what = f"{name!r} ({arch})" if arch else repr(name)
            raise NotFound(f"unknown image {what}", code="unknown_image")
        if any(r.project_id is None for r in targets) and not who.is_admin:
            raise Forbidden(
                f"image {name!r} is public: only an admin may delete it", code="public_image"
            )
        ids = [r.id for r in targets]
        used = s.scalar(select(func.count()).where(InstanceRow.image_id.in_(ids))) or 0
        if used:
            raise Conflict(
                f"image {name!r} is used by {used} instance(s): delete them first",
                code="image_in_use",
            )
        paths = [Path(r.disk_path) for r in targets]
        for r in targets:
            s.delete(r)
    for p in paths:
        if in_store(svc, p):
            p.unlink(missing_ok=True)
