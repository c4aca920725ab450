"""The built-in `tiny` guest image: Debian cloud kernel + busybox + dropbear.

Everything comes from Debian packages (apt-get download, dpkg-deb -x); nothing is mounted and
nothing is installed on the host. The result, per architecture, is a directory with `vmlinuz`,
`initrd.img`, `rootfs.qcow2` and `image.json` (see `ensure_tiny_image`).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cumulo.domain.arch import Arch
from cumulo.images import debs, kmod, rootfs
from cumulo.images.cached_build import locked
from cumulo.images.cpio import CpioArchive
from cumulo.images.debs import DebPackage, ImageBuildError, ToolMissing
from cumulo.images.rootfs import guest_file

__all__ = [
    "ImageBuildError",
    "ToolMissing",
    "default_cache_dir",
    "ensure_tiny_image",
]

# Bump when the build recipe changes in a way the inputs hash would not notice.
BUILDER_VERSION = 1

ROOTFS_SIZE = 1 << 30  # 1 GiB virtual

# Packages (besides the kernel) whose files go into the image, per Debian architecture.
USERLAND_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "sudo",
    "iputils-ping",
    "bash",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "zlib1g",
    "libgmp10",
    "libpam0g",
    "libpam-modules",
    "libaudit1",
    "libcap-ng0",
    "libselinux1",
    "libpcre2-8-0",
    "libcap2",
    "libidn2-0",
    "libunistring2",
    "libtinfo6",
)
# Kernel modules the initramfs loads (with their dependencies, in dependency order).
REQUIRED_MODULES = ("virtio_pci", "virtio_blk", "ext4", "isofs", "virtio_net")
OPTIONAL_MODULES = ("virtio_rng", "evdev", "button")

GUEST_FILES = (
    "init",
    "rcS",
    "rcK",
    "inittab",
    "cumulo-powerbtn",
    "cumulo-hotplug",
    "cumulo-netup",
    "cumulo-userdata",
    "cumulo-cloudconfig",
    "udhcpc.script",
)

@dataclass(frozen=True)
class _ArchSpec:
    console: str
    # The least RAM the image boots in, measured under TCG (the x86_64 kernel and initramfs do
    # not fit in 64 MiB: "initrd is too large"). The API refuses smaller instances of it.
    min_ram_mib: int

    def cmdline(self) -> str:
        return f"console={self.console} root=/dev/vda rootfstype=ext4 rw quiet"


_SPECS = {
    Arch.X86_64: _ArchSpec(console="ttyS0", min_ram_mib=96),
    Arch.ARM64: _ArchSpec(console="ttyAMA0", min_ram_mib=64),
}


def default_cache_dir() -> Path:
    """$CUMULO_IMAGE_CACHE, or /var/cache/cumulo/images."""
    return Path(os.environ.get("CUMULO_IMAGE_CACHE") or "/var/cache/cumulo/images")


def kernel_cmdline(arch: Arch) -> str:
    return _SPECS[arch].cmdline()


def _resolve_packages(arch: Arch, tiny: Path) -> list[DebPackage]:
    """The kernel package first, then USERLAND_PACKAGES. Each `apt-cache` run costs over a
    second here, and every `cumulo up` asks: so the answer is kept on disk
    (`tiny/.resolved-<arch>.json`) for as long as apt's state is unchanged (checking that
    takes milliseconds)."""
    saved = tiny / f".resolved-{arch.value}.json"
    # keyed by the package list too: a cumulo that needs more packages must not reuse the
    # answer of an older one
    apt_key = debs.apt_state_key() + " " + ",".join(USERLAND_PACKAGES)
    pkgs = debs.load_resolved(saved, apt_key)
    if pkgs is None:
        a = arch.debian_name
        meta, *userland = debs.show_many(
            [(f"linux-image-cloud-{a}", a), *((p, a) for p in USERLAND_PACKAGES)]
        )
        kernel = debs.show(debs.kernel_of(meta), a)
        pkgs = [kernel, *userland]
        debs.save_resolved(saved, apt_key, pkgs)
    return pkgs


def inputs_digest(arch: Arch, packages: Sequence[DebPackage]) -> str:
    """SHA-256 over everything the image is made from."""
    doc = {
        "builder_version": BUILDER_VERSION,
        "arch": arch.value,
        "cmdline": kernel_cmdline(arch),
        "rootfs_size": ROOTFS_SIZE,
        "min_ram_mib": _SPECS[arch].min_ram_mib,
        "modules": [REQUIRED_MODULES, OPTIONAL_MODULES],
        "packages": sorted([p.name, p.arch, p.version, p.sha256] for p in packages),
        "guest_files": {n: hashlib.sha256(guest_file(n)).hexdigest() for n in GUEST_FILES},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _current_digest(link: Path) -> str | None:
    try:
        doc = json.loads((link / "image.json").read_text())
    except (OSError, ValueError):
        return None
    digest = doc.get("inputs_sha256")
    if not isinstance(digest, str):
        return None
    if not all((link / f).is_file() for f in ("vmlinuz", "initrd.img", "rootfs.qcow2")):
        return None
    return digest


def ensure_tiny_image(
    arch: Arch, cache_dir: Path | None = None, on_build: Callable[[], None] | None = None
) -> Path:
    """Build (or reuse, if already built from the same inputs) the tiny image for `arch`.

    Returns `<cache>/tiny/<arch>/` (a symlink to the build directory `<arch>.<digest>`; a
    rebuild from new inputs goes to a new directory and the link is swapped atomically, so
    files of an older build stay valid for whoever uses them). Safe to call concurrently:
    builds are serialised with a lock file, made in a temp dir and renamed into place.
    `on_build` is called before a build starts (it takes minutes; reuse takes milliseconds).
    Raises ToolMissing if a host tool is missing and ImageBuildError if the build fails.
    """
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "dpkg", "mke2fs", "qemu-img"):
        debs.require_tool(tool)
    cache = (cache_dir or default_cache_dir()).absolute()
    tiny = cache / "tiny"
    link = tiny / arch.value
    packages = _resolve_packages(arch, tiny)
    digest = inputs_digest(arch, packages)
    if _current_digest(link) == digest:
        return link
    with locked(tiny / f".{arch.value}.lock"):
        if _current_digest(link) == digest:
            return link
        final = tiny / f"{arch.value}.{digest[:16]}"
        if _current_digest(final) != digest:
            if on_build is not None:
                on_build()
            work = Path(tempfile.mkdtemp(prefix=f".build-{arch.value}-", dir=tiny))
            try:
                out = work / "out"
                out.mkdir()
                _build(arch, packages, digest, cache / "debs", work, out)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(out, final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        tmp_link = tiny / f".{arch.value}.link-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        tmp_link.symlink_to(final.name)
        if link.exists() and not link.is_symlink():
            shutil.rmtree(link)  # a plain directory left by something else
        os.replace(tmp_link, link)
    return link


# --- the build ------------------------------------------------------------------------------


def _build(
    arch: Arch,
    packages: Sequence[DebPackage],
    digest: str,
    deb_dir: Path,
    work: Path,
    out: Path,
) -> None:
    trees: dict[str, Path] = {}
    for pkg in packages:
        deb = debs.fetch(pkg, deb_dir)
        trees[pkg.name] = debs.extract(deb, work / "x" / pkg.name)
    kernel_pkg = packages[0]
    ktree = trees[kernel_pkg.name]
    kvers = sorted(p.name for p in (ktree / "lib/modules").iterdir())
    if len(kvers) != 1:
        raise ImageBuildError(f"expected one kernel in {kernel_pkg.name}, found {kvers}")
    kver = kvers[0]
    vmlinuz = ktree / "boot" / f"vmlinuz-{kver}"
    shutil.copyfile(vmlinuz, out / "vmlinuz")

    moddir = ktree / "lib/modules" / kver
    builtin_text = (moddir / "modules.builtin").read_text()
    dep_text = kmod.modules_dep_text(moddir)
    order = kmod.load_order(
        kmod.parse_modules_dep(dep_text),
        [*REQUIRED_MODULES, *OPTIONAL_MODULES],
        builtin=kmod.builtin_names(builtin_text),
        optional=OPTIONAL_MODULES,
    )
    busybox = (trees["busybox-static"] / "bin/busybox").read_bytes()
    applets = busybox_applets(busybox)

    (out / "initrd.img").write_bytes(_initramfs(moddir, order, busybox, applets))

    staging = work / "rootfs"
    rootfs.rootfs_tree(_SPECS[arch].console, staging, busybox, applets, trees)
    _make_qcow2(staging, work / "rootfs.raw", out / "rootfs.qcow2", digest)

    image = {
        "name": "tiny",
        "arch": arch.value,
        "boot": "kernel",
        "default_user": "cumulo",
        "kernel_cmdline": kernel_cmdline(arch),
        "os": f"tiny (busybox+dropbear on Debian cloud kernel {kver})",
        "virtual_size_bytes": ROOTFS_SIZE,
        "min_ram_mib": _SPECS[arch].min_ram_mib,
        "inputs_sha256": digest,
        "kernel_version": kver,
        "kernel_package": f"{kernel_pkg.name}={kernel_pkg.version}",
        "modules": [p.rsplit("/", 1)[-1] for p in order],
    }
    (out / "image.json").write_text(json.dumps(image, indent=2) + "\n")


def busybox_applets(binary: bytes) -> list[str]:
    """Applet names compiled into a busybox binary (read from its applet name table)."""
    start = binary.find(b"\0[\0[[\0")
    if start < 0:
        raise ImageBuildError("cannot find the applet table in busybox")
    names: list[str] = []
    for raw in binary[start + 1 :].split(b"\0"):
        if not raw:
            break
        names.append(raw.decode("ascii"))
    if "sh" not in names or "switch_root" not in names:
        raise ImageBuildError(f"unexpected busybox applet table: {names[:10]}...")
    return names


_INITRD_APPLETS = (
    "sh", "mount", "umount", "insmod", "switch_root", "mkdir", "cat", "echo", "sleep",
    "usleep", "poweroff", "ls", "dmesg",
)  # fmt: skip


def _initramfs(moddir: Path, order: Sequence[str], busybox: bytes, applets: list[str]) -> bytes:
    a = CpioArchive()
    for d in ("bin", "sbin", "dev", "proc", "sys", "newroot", "etc", "lib", "lib/modules"):
        a.add_dir(d)
    a.add_chardev("dev/console", 5, 1)
    a.add_chardev("dev/null", 1, 3, 0o666)
    a.add_file("bin/busybox", busybox, 0o755)
    for name in _INITRD_APPLETS:
        if name in applets:
            a.add_symlink(f"bin/{name}", "busybox")
    a.add_file("init", guest_file("init"), 0o755)
    names = []
    for rel in order:
        base = rel.rsplit("/", 1)[-1]
        names.append(base)
        a.add_file(f"lib/modules/{base}", (moddir / rel).read_bytes())
    a.add_file("etc/modules.order", ("\n".join(names) + "\n").encode())
    return gzip.compress(a.to_bytes(), compresslevel=9, mtime=0)


def _make_qcow2(staging: Path, raw: Path, qcow2: Path, digest: str) -> None:
    with raw.open("wb") as f:
        f.truncate(ROOTFS_SIZE)
    uuid = f"{digest[0:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
    seed = f"{digest[32:40]}-{digest[40:44]}-{digest[44:48]}-{digest[48:52]}-{digest[52:64]}"
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000", LC_ALL="C")
    cmd = [
        debs.require_tool("mke2fs"), "-q", "-F", "-t", "ext4", "-L", "tiny-root", "-U", uuid,
        "-E", f"hash_seed={seed},root_owner=0:0", "-d", str(staging), str(raw),
    ]  # fmt: skip
    _check(cmd, env)
    _check(
        [debs.require_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2",
         str(raw), str(qcow2)],
        env,
    )  # fmt: skip
    raw.unlink()


def _check(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"{cmd[0]} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cumulo.images.tiny", description="Build the tiny guest image."
    )
    parser.add_argument("--arch", required=True, choices=[a.value for a in Arch])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        path = ensure_tiny_image(Arch(args.arch), args.cache_dir)
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
