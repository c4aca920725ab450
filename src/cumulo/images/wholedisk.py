"""The whole-disk form of the tiny image, for bare-metal nodes (x86_64, BIOS boot).

A node boots from its own disk with no hypervisor handing it a kernel, so the disk carries a
boot loader: an MBR partition table with syslinux's MBR code, partition 1 a FAT boot partition
with SYSLINUX (Debian's `syslinux`), the tiny kernel, initrd and `syslinux.cfg`, partition 2
the tiny image's ext4 root filesystem (shrunk to ROOT_SIZE: a deploy writes every byte).
SYSLINUX on FAT rather than EXTLINUX on ext4: the FAT side is written with mtools into a plain
file, so the build needs no mount, no loop device and no root.

The result, `<cache>/tiny-disk/x86_64.<digest16>/`, holds `disk.raw` (sparse) and
`disk.raw.gz` (what a deploy transfers; its sha256 is in `build.json`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

from cumulo.domain.arch import Arch
from cumulo.images import cached_build, tiny
from cumulo.images.cached_build import run
from cumulo.images.debs import ImageBuildError
from cumulo.images.digest import file_digest

BUILDER_VERSION = 1
SECTOR = 512
BOOT_START = 1 << 20  # 1 MiB, the usual alignment
BOOT_SIZE = 64 << 20
ROOT_SIZE = 192 << 20
ROOT_START = BOOT_START + BOOT_SIZE
DISK_SIZE = ROOT_START + ROOT_SIZE
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
FILES = ("disk.raw", "disk.raw.gz")


def syslinux_cfg(cmdline: str) -> str:
    return (
        "SERIAL 0 115200\nDEFAULT tiny\nTIMEOUT 0\nPROMPT 0\n"
        f"LABEL tiny\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n"
    )


def disk_cmdline() -> str:
    return tiny.kernel_cmdline(Arch.X86_64).replace("root=/dev/vda ", "root=/dev/vda2 ")


def mbr(boot_code: bytes, signature: int) -> bytes:
    """A DOS partition table: 1 bootable FAT16 (LBA) partition, 2 Linux, after `boot_code`."""
    if len(boot_code) > 440:
        raise ImageBuildError(f"MBR boot code is {len(boot_code)} bytes (at most 440)")

    def entry(bootable: bool, ptype: int, start: int, size: int) -> bytes:
        # CHS fields say "use LBA" (the maximum); every firmware of the last decades reads LBA
        return struct.pack("<B3sB3sII", 0x80 if bootable else 0, b"\xfe\xff\xff", ptype,
                           b"\xfe\xff\xff", start // SECTOR, size // SECTOR)

    table = entry(True, 0x0E, BOOT_START, BOOT_SIZE) + entry(False, 0x83, ROOT_START, ROOT_SIZE)
    return (boot_code.ljust(440, b"\0") + struct.pack("<IH", signature, 0)
            + table.ljust(64, b"\0") + b"\x55\xaa")


def inputs_digest(tiny_dir: Path) -> str:
    tiny_doc = json.loads((tiny_dir / "image.json").read_text())
    doc = {
        "builder_version": BUILDER_VERSION,
        "tiny": tiny_doc["inputs_sha256"],
        "syslinux": cached_build.package_version("syslinux"),
        "syslinux-common": cached_build.package_version("syslinux-common"),
        "layout": [BOOT_START, BOOT_SIZE, ROOT_SIZE],
        "cfg": syslinux_cfg(disk_cmdline()),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def ensure_tiny_disk(cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the whole-disk tiny image; returns its directory."""
    cache = (cache_dir or tiny.default_cache_dir()).absolute()
    tiny_dir = tiny.ensure_tiny_image(Arch.X86_64, cache)
    digest = inputs_digest(tiny_dir)

    def build(work: Path, out: Path) -> dict[str, object]:
        return _build(tiny_dir, digest, work, out)

    return cached_build.ensure_built(cache / "tiny-disk", Arch.X86_64.value, digest, FILES, build)


def _build(tiny_dir: Path, digest: str, work: Path, out: Path) -> dict[str, object]:
    env = dict(os.environ, LC_ALL="C", E2FSPROGS_FAKE_TIME="1700000000")
    root = work / "root.raw"
    run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw",
         str(tiny_dir / "rootfs.qcow2"), str(root)], env)
    run(["e2fsck", "-f", "-y", str(root)], env, ok=(0, 1))  # 1: "corrected", nothing wrong
    run(["resize2fs", str(root), f"{ROOT_SIZE // 1024}K"], env)

    boot = work / "boot.img"
    run(["mformat", "-i", str(boot), "-C", "-T", str(BOOT_SIZE // SECTOR), "-h", "64",
         "-s", "32", "-H", str(BOOT_START // SECTOR), "-N", digest[:8], "-v", "TINYBOOT",
         "::"], env)
    run(["syslinux", "--install", str(boot)], env)
    cfg = work / "syslinux.cfg"
    cfg.write_text(syslinux_cfg(disk_cmdline()))
    run(["mcopy", "-i", str(boot), str(tiny_dir / "vmlinuz"), str(tiny_dir / "initrd.img"),
         str(cfg), "::"], env)

    raw = out / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(DISK_SIZE)
        f.write(mbr(SYSLINUX_MBR.read_bytes(), int(digest[:8], 16)))
        for src, offset in ((boot, BOOT_START), (root, ROOT_START)):
            f.seek(offset)
            _copy_sparse(src, f)
    return {"name": "tiny-disk", "arch": "x86_64", **gzip_raw(raw, out / "disk.raw.gz"),
            "kernel_cmdline": disk_cmdline()}


def gzip_raw(raw: Path, gz: Path) -> dict[str, object]:
    """Gzip the raw disk `raw` to `gz` (what a deploy transfers; mtime 0: the same disk gives
    the same bytes); the facts a build records: both files' sizes and sha256s."""
    with raw.open("rb") as src_f, gzip.GzipFile(gz, "wb", compresslevel=6, mtime=0) as dst:
        shutil.copyfileobj(src_f, dst, 1 << 20)
    size, sha = file_digest(raw)
    gz_size, gz_sha = file_digest(gz)
    return {"size": size, "sha256": sha, "gz_size": gz_size, "gz_sha256": gz_sha}


def _copy_sparse(src: Path, dst: BinaryIO) -> None:
    """Copy `src` into the open file `dst` at its position, seeking over zero blocks."""
    zero = bytes(1 << 16)
    with src.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk == zero[: len(chunk)]:
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)


def main() -> int:
    print(ensure_tiny_disk())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
