"""The bare-metal deploy ISO (x86_64): ISOLINUX booting the tiny kernel with a deploy ramdisk.

The ramdisk is the tiny image's initramfs (busybox, the virtio modules) with a second cpio
archive appended (the kernel unpacks concatenated archives in order, later files win) that
replaces `/init` with `deploy/init`, links the busybox applets the deploy uses and adds
`sfdisk` from Debian's fdisk package with its loader and libraries (the seed's partition is
added by a real partitioning tool). It is built once and cached
(`<cache>/deploy/x86_64.<digest16>/`). The ISO itself is made per deploy, in
well under a second, because its kernel command line carries that deploy's URLs, in which the
one-time token is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cumulo.domain.arch import Arch
from cumulo.images import cached_build, debs, rootfs, tiny
from cumulo.images.cached_build import run
from cumulo.images.cpio import CpioArchive
from cumulo.images.debs import DebPackage, ImageBuildError

BUILDER_VERSION = 2
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
FILES = ("vmlinuz", "deploy.img")
DEPLOY_APPLETS = (
    "wget", "sha256sum", "dd", "zcat", "gunzip", "ip", "cut", "tail", "sync", "mount",
    "insmod", "sleep", "usleep", "echo", "cat", "mkdir", "sh", "wc",
)  # fmt: skip
# sfdisk and the packages of its shared libraries and loader (Debian 12's: its NEEDED closure).
SFDISK = "sbin/sfdisk"
SFDISK_PACKAGES = ("fdisk", "libfdisk1", "libsmartcols1", "libreadline8", "libtinfo6",
                   "libuuid1", "libblkid1", "libc6")
# What may stand on the kernel command line: URLs of the API (no blanks, quotes or `$`).
_URL_RE = re.compile(r"^http://[A-Za-z0-9.:\-]+(/[A-Za-z0-9._~/%?=&\-]*)?\Z")
_SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
_DISK_RE = re.compile(r"^/dev/[a-z]{2,8}[0-9]{0,3}\Z")


def deploy_init() -> bytes:
    return resources.files("cumulo.images").joinpath("deploy", "init").read_bytes()


def _sfdisk_packages(cache: Path) -> list[DebPackage]:
    """The candidate versions of SFDISK_PACKAGES (apt's answer kept while apt's state holds)."""
    saved = cache / "deploy" / ".resolved-x86_64.json"
    key = debs.apt_state_key() + " " + ",".join(SFDISK_PACKAGES)
    pkgs = debs.load_resolved(saved, key)
    if pkgs is None:
        pkgs = debs.show_many([(p, "amd64") for p in SFDISK_PACKAGES])
        debs.save_resolved(saved, key, pkgs)
    return pkgs


def inputs_digest(tiny_dir: Path, packages: Sequence[DebPackage] = ()) -> str:
    doc = {
        "builder_version": BUILDER_VERSION,
        "tiny": json.loads((tiny_dir / "image.json").read_text())["inputs_sha256"],
        "init": hashlib.sha256(deploy_init()).hexdigest(),
        "applets": DEPLOY_APPLETS,
        "packages": sorted([p.name, p.arch, p.version, p.sha256] for p in packages),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def ensure_deploy_ramdisk(cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the deploy kernel + ramdisk; returns their directory."""
    cache = (cache_dir or tiny.default_cache_dir()).absolute()
    tiny_dir = tiny.ensure_tiny_image(Arch.X86_64, cache)
    packages = _sfdisk_packages(cache)

    def build(work: Path, out: Path) -> dict[str, object]:
        shutil.copyfile(tiny_dir / "vmlinuz", out / "vmlinuz")
        extra = CpioArchive()
        extra.add_file("init", deploy_init(), 0o755)
        for name in DEPLOY_APPLETS:
            extra.add_symlink(f"bin/{name}", "busybox")
        _add_sfdisk(extra, packages, cache / "debs", work)
        overlay = gzip.compress(extra.to_bytes(), compresslevel=9, mtime=0)
        (out / "deploy.img").write_bytes((tiny_dir / "initrd.img").read_bytes() + overlay)
        return {"name": "deploy", "arch": "x86_64"}

    return cached_build.ensure_built(cache / "deploy", Arch.X86_64.value,
                                     inputs_digest(tiny_dir, packages), FILES, build)


def _add_sfdisk(archive: CpioArchive, packages: Sequence[DebPackage], deb_dir: Path,
                work: Path) -> None:
    """sfdisk with its loader and libraries, staged as the tiny root file system stages its
    binaries (rootfs.copy_elf_with_libs), then added to `archive` file by file."""
    trees = {p.name: debs.extract(debs.fetch(p, deb_dir), work / "x" / p.name)
             for p in packages}
    staging = work / "sfdisk"
    rootfs.copy_elf_with_libs(trees["fdisk"], SFDISK, [trees[p] for p in SFDISK_PACKAGES[1:]],
                              staging)
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging).as_posix()
        if path.is_dir():
            archive.add_dir(rel)
        else:
            archive.add_file(rel, path.read_bytes(), 0o755)


def deploy_cmdline(image_url: str, sha256: str, report_url: str, seed_url: str,
                   disk: str = "/dev/vda") -> str:
    """The deploy kernel's command line; every value is checked, none reaches it unchecked."""
    for url in (image_url, report_url, seed_url):
        if not _URL_RE.match(url):
            raise ImageBuildError(f"not a deploy URL: {url!r}")
    if not _SHA_RE.match(sha256):
        raise ImageBuildError(f"not a sha256: {sha256!r}")
    if not _DISK_RE.match(disk):
        raise ImageBuildError(f"not a disk device: {disk!r}")
    return (f"console=ttyS0 quiet cumulo.image={image_url} cumulo.sha256={sha256} "
            f"cumulo.report={report_url} cumulo.seed={seed_url} cumulo.disk={disk}")


def wipe_cmdline(report_url: str, disk: str = "/dev/vda") -> str:
    """The command line of the same ramdisk in wipe mode (a node's cleaning): it zeroes the
    start and the end of `disk` and reports to `report_url`; both checked like a deploy's."""
    if not _URL_RE.match(report_url):
        raise ImageBuildError(f"not a deploy URL: {report_url!r}")
    if not _DISK_RE.match(disk):
        raise ImageBuildError(f"not a disk device: {disk!r}")
    return f"console=ttyS0 quiet cumulo.mode=wipe cumulo.report={report_url} cumulo.disk={disk}"


def isolinux_cfg(cmdline: str) -> str:
    return (
        "SERIAL 0 115200\nDEFAULT deploy\nTIMEOUT 0\nPROMPT 0\n"
        f"LABEL deploy\n  KERNEL /vmlinuz\n  INITRD /deploy.img\n  APPEND {cmdline}\n"
    )


def build_iso(ramdisk_dir: Path, cmdline: str) -> bytes:
    """An El Torito ISO (ISOLINUX, BIOS) booting the deploy ramdisk with `cmdline`."""
    with tempfile.TemporaryDirectory(prefix="cumulo-deploy-iso-") as tmp:
        tree = Path(tmp) / "tree"
        (tree / "isolinux").mkdir(parents=True)
        shutil.copyfile(ISOLINUX_BIN, tree / "isolinux/isolinux.bin")
        shutil.copyfile(LDLINUX_C32, tree / "isolinux/ldlinux.c32")
        (tree / "isolinux/isolinux.cfg").write_text(isolinux_cfg(cmdline))
        for name in FILES:
            (tree / name).symlink_to(ramdisk_dir / name)
        iso = Path(tmp) / "deploy.iso"
        run(["xorriso", "-as", "mkisofs", "-quiet", "-follow-links", "-o", str(iso),
             "-V", "CUMULO_DEPLOY", "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
             "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(tree)])
        return iso.read_bytes()
