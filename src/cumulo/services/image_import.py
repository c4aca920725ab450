"""Image imports: a file the CLI uploads, an http(s) URL the API downloads, or a stopped
instance's boot disk that its host agent uploads (see image_exports.py).

The API never opens a path a user names. Every import lands in the image store as
`<store>/.tmp-*` (the user's bytes), is inspected with qemu-img (see cumulo.images.qemu_img),
converted into a fresh qcow2 under another temp name, made read-only (0444) and renamed to
`<store>/<image-id>.qcow2`; only then is the row written, with the file's size and sha256
(what hosts check the copies they fetch against). Any failure removes the temp files
and writes no row, so a refused or interrupted import leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.orm import Session

from cumulo.db.tables import ImageRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, CumuloError, Forbidden, InvalidInput
from cumulo.domain.ids import new_id
from cumulo.domain.validation import DEFAULT_MIN_RAM_MIB, dns_label, min_ram_mib, short_text
from cumulo.images import qemu_img
from cumulo.images.digest import file_digest
from cumulo.services import images
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.counters import IMAGE_BYTES_IN
from cumulo.services.download_guard import GuardedTransport, allowed_networks
from cumulo.services.views import ImageView

IMPORT_BOOT_MODES = ("bios", "uefi")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
MAX_URL_LEN = 2048
MAX_OS_LEN = 200
STALE_TEMP_S = 6 * 3600
DOWNLOAD_CHUNK = 1 << 20
# Serialises "is the name free? write the row" (public images have a NULL project, which a
# unique constraint does not cover).
_ROW_LOCK = threading.Lock()


class StoreUnavailable(CumuloError):
    code = "image_store_unavailable"
    status = 503


class DownloadFailed(CumuloError):
    code = "download_failed"
    status = 502


@dataclass(frozen=True)
class ImportRequest:
    name: str
    arch: str
    boot: str | None = None  # default: bios on x86_64, uefi on arm64
    default_user: str = "root"
    os: str = ""
    public: bool = False
    min_ram_mib: int = DEFAULT_MIN_RAM_MIB


@dataclass(frozen=True)
class Target:
    """A validated import: what the row will say, and whose it is (None: public)."""

    name: str
    arch: str
    boot: str
    default_user: str
    os: str
    project_id: str | None
    min_ram_mib: int
    # Kernel-boot images made from an instance share their base image's kernel and initrd.
    kernel_path: str | None = None
    kernel_size: int = 0
    kernel_sha256: str = ""
    initrd_path: str | None = None
    initrd_size: int = 0
    initrd_sha256: str = ""
    kernel_cmdline: str = ""


def store(svc: Services) -> Path:
    if svc.image_store is None:
        raise StoreUnavailable("this server has no image store configured: imports are off")
    svc.image_store.mkdir(parents=True, exist_ok=True)
    return svc.image_store


def max_bytes(svc: Services) -> int:
    return svc.settings.max_image_gib * 2**30


def _owner(s: Session, who: Principal, project: str | None, public: bool) -> str | None:
    prj = scope_project(s, who, project)
    if public:
        if not who.is_admin:
            raise Forbidden("only an admin may add a public image", code="public_image")
        return None
    return prj.id


def refuse_taken(s: Session, t: Target) -> None:
    if images.variant_exists(s, t.project_id, t.name, t.arch):
        where = "public" if t.project_id is None else "this project's"
        raise Conflict(
            f"{where} image {t.name!r} already has an {t.arch} variant: delete it first",
            code="image_exists",
        )


def plan(svc: Services, who: Principal, project: str | None, req: ImportRequest) -> Target:
    """Validate an import request before any byte is transferred."""
    store(svc)
    dns_label(req.name, "image name")
    arch = Arch.parse(req.arch)
    default_boot = "bios" if arch is Arch.X86_64 else "uefi"
    boot = req.boot or default_boot
    if boot == "kernel":
        raise InvalidInput(
            "--boot kernel needs a kernel and an initrd, which imports do not take: "
            "import a disk that boots by itself (--boot bios or uefi)",
            code="invalid_boot",
        )
    if boot not in IMPORT_BOOT_MODES:
        raise InvalidInput(f"unknown boot mode {boot!r} (bios or uefi)", code="invalid_boot")
    if arch is Arch.ARM64 and boot == "bios":
        raise InvalidInput("arm64 images boot with UEFI (--boot uefi)", code="invalid_boot")
    if not _USER_RE.match(req.default_user):
        raise InvalidInput(
            f"invalid default user {req.default_user!r}: a Unix user name "
            "(a-z, 0-9, '_' and '-', at most 32)",
            code="invalid_user",
        )
    short_text(req.os, "os", MAX_OS_LEN)
    min_ram = min_ram_mib(req.min_ram_mib)
    with svc.db.session() as s:
        t = Target(
            name=req.name, arch=arch.value, boot=boot, default_user=req.default_user,
            os=req.os, project_id=_owner(s, who, project, req.public), min_ram_mib=min_ram,
        )
        refuse_taken(s, t)
    return t


def _clean_stale(root: Path) -> None:
    """Temp files older than STALE_TEMP_S are left-overs of a crashed server."""
    cutoff = time.time() - STALE_TEMP_S
    for p in root.glob(".tmp-*"):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
        except OSError:
            pass


def staging_path(svc: Services, suffix: str = ".upload") -> Path:
    root = store(svc)
    _clean_stale(root)
    return root / f".tmp-{secrets.token_hex(8)}{suffix}"


class StagedFile:
    """The user's bytes being written to a staged file (created 0600), capped in size.
    Any failure (and abort()) removes the file."""

    def __init__(self, svc: Services, dest: Path) -> None:
        self.svc = svc
        self.dest = dest
        self.cap = max_bytes(svc)
        self.size = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._f = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        try:
            self.size += len(chunk)
            if self.size > self.cap:
                raise too_large(self.svc)
            self._f.write(chunk)
            IMAGE_BYTES_IN.inc(len(chunk))
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError) and qemu_img.is_no_space(e):
                raise qemu_img.InsufficientStorage(
                    "the image store is full: free space and retry"
                ) from None
            raise

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            self.abort()
            if qemu_img.is_no_space(e):
                raise qemu_img.InsufficientStorage(
                    "the image store is full: free space and retry"
                ) from None
            raise

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        self.dest.unlink(missing_ok=True)


def write_staged(svc: Services, dest: Path, chunks: Iterable[bytes]) -> int:
    """Write `chunks` to `dest`, refusing more than the size cap; `dest` is removed on failure."""
    staged = StagedFile(svc, dest)
    try:
        for chunk in chunks:
            staged.write(chunk)
    except BaseException:
        staged.abort()
        raise
    staged.close()
    return staged.size


def too_large(svc: Services) -> qemu_img.ImageTooLarge:
    return qemu_img.ImageTooLarge(
        f"the image is larger than the limit of {svc.settings.max_image_gib} GiB "
        "(max_image_gib)"
    )


def _install(svc: Services, t: Target, src: Path, fmt: str,
             then: Callable[[Session, str], None] | None = None) -> ImageView:
    """Convert `src` into the store and write the row (and `then(session, image_id)` in the
    same transaction). Removes what it made on failure."""
    root = store(svc)
    tmp = root / f".tmp-{secrets.token_hex(8)}.qcow2"
    image_id = new_id("img")
    final = root / f"{image_id}.qcow2"
    recorded = False
    try:
        qemu_img.convert_to_qcow2(src, fmt, tmp)
        made = qemu_img.info(tmp, "qcow2")
        vsize = int(made.get("virtual-size", 0))
        os.chmod(tmp, 0o444)
        disk_size, disk_sha256 = file_digest(tmp)
        os.replace(tmp, final)
        with _ROW_LOCK, svc.db.session() as s:
            refuse_taken(s, t)
            s.add(ImageRow(
                id=image_id, name=t.name, project_id=t.project_id, arch=t.arch, boot=t.boot,
                default_user=t.default_user, os=t.os, disk_path=str(final),
                disk_size=disk_size, disk_sha256=disk_sha256,
                kernel_path=t.kernel_path, kernel_size=t.kernel_size,
                kernel_sha256=t.kernel_sha256, initrd_path=t.initrd_path,
                initrd_size=t.initrd_size, initrd_sha256=t.initrd_sha256,
                kernel_cmdline=t.kernel_cmdline, virtual_size_bytes=vsize, state="available",
                min_ram_mib=t.min_ram_mib,
            ))
            if then is not None:
                then(s, image_id)
        recorded = True  # committed: from here on the file belongs to the row
        with svc.db.session() as s:
            return images.view_of(s, t.project_id, t.name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if not recorded:
            final.unlink(missing_ok=True)
        raise


def import_staged(svc: Services, t: Target, staged: Path,
                  then: Callable[[Session, str], None] | None = None) -> ImageView:
    """Inspect the user's bytes at `staged`, convert them into the store, record the image
    (and `then`, as for _install). `staged` is always removed."""
    try:
        info = qemu_img.inspect(staged, max_virtual_size=max_bytes(svc))
        return _install(svc, t, staged, info.format, then)
    finally:
        staged.unlink(missing_ok=True)


def check_url(url: str) -> httpx.URL:
    if len(url) > MAX_URL_LEN or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidInput("invalid URL (spaces, control characters or too long)",
                           code="invalid_url")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise InvalidInput(f"invalid URL {url!r}", code="invalid_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInput("only http:// and https:// URLs can be imported", code="invalid_url")
    return parsed


def _download(svc: Services, url: httpx.URL, dest: Path) -> None:
    cap = max_bytes(svc)
    timeout = httpx.Timeout(30.0, read=120.0)
    try:
        guard = GuardedTransport(allowed_networks(svc.settings.image_url_allowed_networks))
        with httpx.Client(
            timeout=timeout, follow_redirects=True, max_redirects=5, trust_env=False,
            transport=guard,
        ) as http, http.stream("GET", url) as r:
            if r.status_code != 200:
                raise DownloadFailed(f"GET {url} answered HTTP {r.status_code}")
            length = r.headers.get("content-length")
            if length and length.isdigit() and int(length) > cap:
                raise too_large(svc)
            write_staged(svc, dest, r.iter_bytes(DOWNLOAD_CHUNK))
    except CumuloError:
        dest.unlink(missing_ok=True)
        raise
    except httpx.HTTPError as e:
        dest.unlink(missing_ok=True)
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DownloadFailed(f"cannot download {url}: {detail}") from None


def import_url(
    svc: Services, who: Principal, project: str | None, req: ImportRequest, url: str
) -> ImageView:
    parsed = check_url(url)
    t = plan(svc, who, project, req)
    staged = staging_path(svc)
    _download(svc, parsed, staged)
    return import_staged(svc, t, staged)
