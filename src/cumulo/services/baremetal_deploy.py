"""A bare-metal deploy's side of the API: its one-time token, and what that token opens.

Each deploy gets a random token (services.baremetal_deploy_steps issues it); the node's row
keeps only its sha256 and the deadline, with which it expires. The token is in the URLs the
node is given and nowhere else: the BMC fetches the deploy ISO with it (Redfish InsertMedia),
and the deploy ramdisk on the node fetches the whole-disk image and the instance's NoCloud
seed (services.baremetal_seed) and posts its report with it.
These routes take no other credential (a node being deployed has none), so the token is all
that opens them, and only while its deploy waits for them. A token that is malformed,
unknown, finished or expired is the same `unknown_deploy` to the caller.

A node's cleaning (services.baremetal_clean_steps) uses the same token and routes: its ISO
boots the same ramdisk in wipe mode (no image, no seed: `/image` and `/seed` are refused),
and it reports to the same `/report`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cumulo.db.tables import BaremetalNodeRow, ImageRow, InstanceRow
from cumulo.domain import baremetal as bm
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.images import deploy_iso, imported_disk, wholedisk
from cumulo.images.debs import ImageBuildError
from cumulo.services.context import Services

PREFIX = "/v1/baremetal/deploy"
_TOKEN = re.compile(r"^[0-9a-f]{64}\Z")
_TOKEN_STATES = (bm.NodeState.DEPLOYING.value, bm.NodeState.CLEANING.value)
WHOLE_DISKS = "whole-disk"  # in the image store: the whole-disk forms of imported images


def new_token() -> tuple[str, str]:
    """A deploy's token and the digest its node's row keeps."""
    token = secrets.token_hex(32)
    return token, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def iso_url(svc: Services, token: str) -> str:
    """Where the BMC fetches the deploy ISO (the API as BMCs reach it)."""
    return f"{svc.settings.baremetal.media_url}{PREFIX}/{token}/deploy.iso"


def urls_configured(svc: Services) -> str | None:
    """None when deploys can run, else why not."""
    b = svc.settings.baremetal
    if b.media_url is None or b.provision_url is None:
        return ("this API has no deploy URLs: set [baremetal] media_url and provision_url "
                "(`cumulo up --baremetal-nodes` sets them)")
    return None


@dataclass(frozen=True)
class WholeDisk:
    """An image's whole-disk form, as a deploy writes it: gzipped raw, and its sha256."""

    path: Path
    sha256: str


def _is_tiny(image: ImageRow) -> bool:
    return image.project_id is None and image.name == "tiny"


def require_whole_disk(image: ImageRow) -> None:
    """Refuse `image` unless it has a whole-disk form: the built-in tiny image (x86_64) and
    any x86_64 image that is a whole disk (a partition table: images.imported_disk). A bm1
    create checks it (services.baremetal_instances), and so does the deploy."""
    if image.arch != "x86_64":
        raise _no_form(image.name, image.arch, "only x86_64 images deploy so far")
    if _is_tiny(image):
        return
    try:
        why = _why_not_whole(image.disk_path, image.disk_sha256, image.virtual_size_bytes)
    except ImageBuildError as e:  # not cached: a read that failed may work next time
        raise _no_form(image.name, image.arch, f"its first sectors cannot be read: {e}") from None
    if why is not None:
        raise _no_form(image.name, image.arch, f"it is no whole disk: {why}")


def _no_form(name: str, arch: str, why: str) -> InvalidInput:
    return InvalidInput(f"image {name!r} ({arch}) has no whole-disk form for bare metal: {why}",
                        code="no_whole_disk_image")


@functools.lru_cache(maxsize=256)
def _why_not_whole(path: str, sha256: str, virtual_size: int) -> str | None:
    """Why the image's content is no whole disk (None: it is one). A bm1 create asks each
    time: the first sectors are read once per content, a refusal remembered as well."""
    try:
        imported_disk.check(Path(path), "qcow2", virtual_size)
    except imported_disk.NotWholeDisk as e:
        return str(e)
    return None


def whole_disk(image: ImageRow) -> WholeDisk:
    """The whole-disk form of `image` (built on first use, kept in the image store beside
    the image, keyed by the image's sha256)."""
    require_whole_disk(image)
    if _is_tiny(image):
        return _tiny_disk()
    try:
        built = imported_disk.ensure_imported_disk(
            Path(image.disk_path), image.disk_sha256, Path(image.disk_path).parent / WHOLE_DISKS)
    except (imported_disk.NotWholeDisk, ImageBuildError) as e:
        raise _no_form(image.name, image.arch, f"building it failed: {e}") from None
    return _form(built)


@functools.cache
def _tiny_disk() -> WholeDisk:
    return _form(wholedisk.ensure_tiny_disk())


def _form(built: Path) -> WholeDisk:
    meta = json.loads((built / "build.json").read_text())
    return WholeDisk(built / "disk.raw.gz", str(meta["gz_sha256"]))


def image_of(s: Session, instance_id: str | None) -> ImageRow:
    row = None if instance_id is None else s.get(InstanceRow, instance_id)
    image = None if row is None else s.get(ImageRow, row.image_id)
    if image is None:
        raise InvalidInput("the instance or its image is gone", code="no_whole_disk_image")
    return image


def unknown_deploy() -> NotFound:
    return NotFound("no bare-metal deploy waits for this token (unknown, finished or "
                    "expired)", code="unknown_deploy")


def waiting_node(s: Session, svc: Services, token: str, *, lock: bool = False
                 ) -> BaremetalNodeRow:
    """The node whose deploy `token` opens, while it waits for it."""
    unknown = unknown_deploy()
    if not _TOKEN.match(token):
        raise unknown
    q = select(BaremetalNodeRow).where(BaremetalNodeRow.deploy_token == digest(token))
    row = s.scalar(q.with_for_update() if lock else q)
    if (row is None or row.state not in _TOKEN_STATES
            or row.deploy_step not in (bm.DeployStep.BOOTING, bm.DeployStep.WAITING)
            or row.deploy_deadline is None or row.deploy_deadline <= svc.clock()):
        raise unknown
    return row


def image_file(svc: Services, token: str) -> Path:
    """The whole-disk image the deploy writes (its sha256 is on the ramdisk's command line)."""
    with svc.db.session() as s:
        node = waiting_node(s, svc, token)
        if node.state != bm.NodeState.DEPLOYING.value:  # a cleaning's wipe fetches nothing
            raise unknown_deploy()
        return whole_disk(image_of(s, node.instance_id)).path


def iso(svc: Services, token: str) -> bytes:
    """The deploy ISO, built for this deploy: its kernel command line carries the image URL,
    its sha256, the report URL and the seed's (services.baremetal_seed), all on the
    provisioning network, with this token (a cleaning's: wipe mode and the report URL)."""
    with svc.db.session() as s:
        node = waiting_node(s, svc, token)
        disk = (None if node.state == bm.NodeState.CLEANING.value
                else whole_disk(image_of(s, node.instance_id)))
    why = urls_configured(svc)
    if why is not None:
        raise Conflict(why, code="deploy_not_configured")
    base = f"{svc.settings.baremetal.provision_url}{PREFIX}/{token}"
    cmdline = (deploy_iso.wipe_cmdline(f"{base}/report", erase=svc.settings.baremetal.erase)
               if disk is None
               else deploy_iso.deploy_cmdline(f"{base}/image", disk.sha256, f"{base}/report",
                                              f"{base}/seed"))
    return deploy_iso.build_iso(deploy_iso.ensure_deploy_ramdisk(), cmdline)


def report(svc: Services, token: str, body: bytes) -> str:
    """Record the deploy ramdisk's report ("ok" or "error=<why>"); the conductor acts on it
    at its next pass. The same report again is fine (the ramdisk resends one whose answer
    it lost); another is refused. The node's generation is left alone: a conductor step
    under way (its boot) must not lose its write to the report."""
    with svc.db.session() as s:
        node = waiting_node(s, svc, token, lock=True)
        text = bm.deploy_report(body)
        if node.deploy_report is None:
            s.execute(update(BaremetalNodeRow).where(BaremetalNodeRow.id == node.id)
                      .values(deploy_report=text))
        elif node.deploy_report != text:
            raise Conflict("this deploy reported already", code="deploy_already_reported")
        return text
