"""Inspect and convert untrusted disk images with qemu-img.

Nothing here trusts the file. The format is probed, cross-checked with the file's magic bytes,
then pinned (`-f`) for every later call, so a raw upload is never re-interpreted as a qcow2
header. A qcow2 that names a backing file or an external data file (which would make qemu-img
read another file of the server, e.g. /etc/shadow), an encrypted or corrupt one, or a file of
no known disk layout is refused before it is converted. qemu-img always runs with its
arguments as a list (never a shell), with a timeout, and inspections also under CPU and memory
limits (a hostile header must not exhaust the server).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cumulo.domain.errors import CumuloError, InvalidInput

QEMU_IMG = "qemu-img"
ACCEPTED_FORMATS = ("qcow2", "raw")
INFO_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = 300.0
CONVERT_TIMEOUT_S = 3600.0
# Limits for inspections (not conversions): address space and CPU seconds.
INSPECT_MEMORY_BYTES = 1 << 30
INSPECT_CPU_S = 60
SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"
_HEADER_BYTES = 0x10048  # enough for every signature below


class InsufficientStorage(CumuloError):
    """The image store's filesystem is full."""

    code = "no_space"
    status = 507


class ImageTooLarge(CumuloError):
    code = "image_too_large"
    status = 413


class ImageToolError(CumuloError):
    """qemu-img itself failed in a way the file does not explain."""

    code = "image_tool_failed"
    status = 500


@dataclass(frozen=True)
class ImageInfo:
    format: str  # qcow2 | raw
    virtual_size: int  # bytes
    file_size: int  # bytes on disk (apparent size)


def _one_line(text: str, path: Path) -> str:
    """qemu-img's message on one line, the server's temp path replaced by 'the image'."""
    text = text.replace(str(path), "the image").replace(path.name, "the image")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = "; ".join(lines)
    for prefix in ("qemu-img: ",):
        msg = msg.replace(prefix, "")
    return msg[:300] or "no details"


def _run(argv: list[str], timeout: float, *, limited: bool) -> subprocess.CompletedProcess[str]:
    if limited and shutil.which("prlimit"):
        argv = ["prlimit", f"--as={INSPECT_MEMORY_BYTES}", f"--cpu={INSPECT_CPU_S}", "--", *argv]
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise InvalidInput(
            f"qemu-img took longer than {timeout:.0f} s on the image: refusing it",
            code="corrupt_image",
        ) from None
    except FileNotFoundError:
        raise ImageToolError("qemu-img is not installed on the API server (qemu-utils)") from None


def _sniff_archive(head: bytes) -> str | None:
    """The name of a compression/archive format the file is in, if any."""
    magics = [
        (b"\xfd7zXZ\x00", "xz-compressed (decompress it first: xz -d)"),
        (b"\x1f\x8b", "gzip-compressed (decompress it first: gunzip)"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed (decompress it first: zstd -d)"),
        (b"BZh", "bzip2-compressed (decompress it first: bunzip2)"),
        (b"PK\x03\x04", "a zip archive (extract the disk image first)"),
        (b"7z\xbc\xaf\x27\x1c", "a 7z archive (extract the disk image first)"),
    ]
    for magic, what in magics:
        if head.startswith(magic):
            return what
    if head[257:262] == b"ustar":
        return "a tar archive (extract the disk image first)"
    return None


def _looks_like_disk(head: bytes) -> bool:
    """A raw image must start like a disk: a partition table or a known root filesystem."""
    return (
        head[510:512] == b"\x55\xaa"  # MBR (also GPT's protective MBR)
        or head[512:520] == b"EFI PART"  # GPT
        or head[1080:1082] == b"\x53\xef"  # ext2/3/4 superblock magic
        or head[0:4] == b"XFSB"  # XFS
        or head[0x10040:0x10048] == b"_BHRfS_M"  # btrfs
    )


def _json(proc: subprocess.CompletedProcess[str], path: Path, what: str) -> dict[str, Any]:
    if proc.returncode != 0:
        raise InvalidInput(
            f"the image cannot be read as {what}: {_one_line(proc.stderr, path)}",
            code="corrupt_image",
        )
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise InvalidInput(
            f"qemu-img gave no readable description of the image ({what})", code="corrupt_image"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            "qemu-img gave no readable description of the image", code="corrupt_image"
        )
    return data


def probe_format(path: Path) -> str:
    """The format qemu-img sees in `path` (no -f: probing). Only used to decide which format
    to pin; everything after is done with `-f <format>`."""
    proc = _run([QEMU_IMG, "info", "--output=json", str(path)], INFO_TIMEOUT_S, limited=True)
    fmt = _json(proc, path, "a disk image").get("format")
    if not isinstance(fmt, str):
        raise InvalidInput("qemu-img could not tell the image's format", code="corrupt_image")
    return fmt


def info(path: Path, fmt: str) -> dict[str, Any]:
    """`qemu-img info --output=json -f fmt path` as a dict (corrupt_image if it does not parse)."""
    proc = _run(
        [QEMU_IMG, "info", "--output=json", "-f", fmt, str(path)], INFO_TIMEOUT_S, limited=True
    )
    return _json(proc, path, fmt)


def _refuse_unsafe(data: dict[str, Any]) -> None:
    backing_keys = ("backing-filename", "full-backing-filename", "backing-filename-format")
    if any(k in data for k in backing_keys):
        raise InvalidInput(
            "the image refers to a backing file: upload a standalone image "
            "(qemu-img convert -O qcow2 IN OUT flattens it)",
            code="image_backing_file",
        )
    specific = data.get("format-specific")
    details = specific.get("data", {}) if isinstance(specific, dict) else {}
    if not isinstance(details, dict):
        details = {}
    if "data-file" in details or "data-file-raw" in details:
        raise InvalidInput(
            "the image keeps its data in an external data file: upload a standalone image",
            code="image_data_file",
        )
    if data.get("encrypted") or "encrypt" in details:
        raise InvalidInput("the image is encrypted: upload an unencrypted image",
                           code="image_encrypted")
    if details.get("corrupt") is True:
        raise InvalidInput("the image is marked corrupt", code="corrupt_image")


def _check_qcow2(path: Path) -> None:
    proc = _run(
        [QEMU_IMG, "check", "--output=json", "-f", "qcow2", str(path)],
        CHECK_TIMEOUT_S,
        limited=True,
    )
    # 0: clean; 3: only leaked clusters (harmless, conversion drops them); else corrupt.
    if proc.returncode in (0, 3):
        return
    detail = ""
    try:
        data = json.loads(proc.stdout)
        if isinstance(data, dict) and data.get("corruptions"):
            detail = f"{data['corruptions']} corruption(s) found"
    except ValueError:
        pass
    raise InvalidInput(
        f"the qcow2 image is damaged or truncated: {detail or _one_line(proc.stderr, path)}",
        code="corrupt_image",
    )


def inspect(path: Path, *, max_virtual_size: int) -> ImageInfo:
    """Decide whether `path` is an acceptable image. Raises InvalidInput (stable codes):
    empty_image, unsupported_image_format, unrecognized_image, corrupt_image,
    image_backing_file, image_data_file, image_encrypted, image_too_large."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("the image file is empty", code="empty_image")
    with path.open("rb") as f:
        head = f.read(_HEADER_BYTES)
    archive = _sniff_archive(head)
    if archive:
        raise InvalidInput(f"the file is {archive}", code="unsupported_image_format")
    fmt = probe_format(path)
    if fmt not in ACCEPTED_FORMATS:
        raise InvalidInput(
            f"image format {fmt!r} is not supported (use qcow2 or raw)",
            code="unsupported_image_format",
        )
    if (fmt == "qcow2") != head.startswith(QCOW2_MAGIC):
        raise InvalidInput("the image's header does not match its format", code="corrupt_image")
    data = info(path, fmt)
    if data.get("format") != fmt:
        raise InvalidInput("the image's format changed between two reads", code="corrupt_image")
    _refuse_unsafe(data)
    vsize = data.get("virtual-size")
    if not isinstance(vsize, int) or isinstance(vsize, bool) or vsize <= 0:
        raise InvalidInput(f"the image's virtual size is {vsize!r}: it must be > 0",
                           code="empty_image")
    if vsize > max_virtual_size:
        raise ImageTooLarge(
            f"the image's virtual size ({vsize} bytes) exceeds the limit of "
            f"{max_virtual_size} bytes"
        )
    if fmt == "raw":
        if size % SECTOR:
            raise InvalidInput(
                f"a raw disk image is a whole number of {SECTOR}-byte sectors; "
                f"this file has {size} bytes",
                code="unrecognized_image",
            )
        if not _looks_like_disk(head):
            raise InvalidInput(
                "the file is not a disk image: no partition table or known filesystem found",
                code="unrecognized_image",
            )
    else:
        _check_qcow2(path)
    return ImageInfo(format=fmt, virtual_size=vsize, file_size=size)


def convert_to_qcow2(src: Path, fmt: str, dest: Path) -> None:
    """A fresh, standalone qcow2 copy of `src` (read as `fmt`) at `dest`. On failure `dest`
    is removed; a full filesystem raises InsufficientStorage."""
    if fmt not in ACCEPTED_FORMATS:
        raise ValueError(f"refusing to convert from {fmt!r}")
    argv = [QEMU_IMG, "convert", "-q", "-f", fmt, "-O", "qcow2", str(src), str(dest)]
    try:
        proc = _run(argv, CONVERT_TIMEOUT_S, limited=False)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        msg = proc.stderr
        if "No space left on device" in msg or "Disk quota exceeded" in msg:
            raise InsufficientStorage("the image store is full: free space and retry")
        raise InvalidInput(
            f"the image could not be converted: {_one_line(msg, src)}", code="corrupt_image"
        )


def is_no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
