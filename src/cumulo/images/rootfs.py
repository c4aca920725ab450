"""The tiny image's root file system tree: busybox and its applet links, the Debian binaries
the guest runs (dropbear, sudo with its plugin and PAM modules, iputils ping, bash) with their
loaders and shared libraries, and the boot scripts and configuration files. Staged in a
directory that `mke2fs -d` turns into the root disk (it keeps modes, owners and setuid)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cumulo.images import kmod
from cumulo.images.debs import ImageBuildError

LIB_PACKAGES = (
    "libc6", "libcrypt1", "libtomcrypt1", "libtommath1", "zlib1g", "libgmp10", "libpam0g",
    "libaudit1", "libcap-ng0", "libselinux1", "libpcre2-8-0", "libcap2", "libidn2-0",
    "libunistring2", "libtinfo6",
)  # fmt: skip

# sudo for the default user (its rule is written at boot from the seed), with the sudoers
# policy plugin it loads and the two PAM modules /etc/pam.d/sudo names.
SUDO_FILES = ("usr/bin/sudo", "usr/libexec/sudo/sudoers.so")
PAM_MODULES = ("pam_permit.so", "pam_deny.so")
SUDOERS = b"""# cumulo tiny: rules for the default user come from the seed (rcS writes sudoers.d)
Defaults env_reset
Defaults secure_path="/usr/sbin:/usr/bin:/sbin:/bin"
root ALL=(ALL:ALL) ALL
@includedir /etc/sudoers.d
"""
# No password is ever asked (the default user has none): NOPASSWD rules skip `auth`.
PAM_SUDO = b"auth required pam_deny.so\naccount required pam_permit.so\n" \
    b"session required pam_permit.so\n"
PAM_OTHER = b"auth required pam_deny.so\naccount required pam_deny.so\n" \
    b"password required pam_deny.so\nsession required pam_deny.so\n"

DROPBEAR_FILES = (
    "usr/sbin/dropbear",
    "usr/bin/dropbearkey",
    "usr/bin/dbclient",
    "usr/bin/dropbearconvert",
)


def guest_file(name: str) -> bytes:
    return resources.files("cumulo.images").joinpath("tiny", name).read_bytes()


def copy_elf_with_libs(src_root: Path, rel: str, lib_trees: Sequence[Path], dest: Path) -> None:
    """Copy `rel` from `src_root` into `dest`, plus its loader and shared libraries (looked
    up in its own RUNPATH inside `src_root` first, then in the library packages)."""
    todo = [(_resolve_in(src_root / rel, src_root), rel)]
    seen: set[str] = set()
    while todo:
        src, relpath = todo.pop()
        if relpath in seen:
            continue
        seen.add(relpath)
        target = dest / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        target.chmod(0o755)
        elf = kmod.ElfFile.open(target)
        interp = elf.interpreter()
        if interp:
            found = _find_in_trees(interp.lstrip("/"), lib_trees)
            if found is None:
                raise ImageBuildError(f"loader {interp} (for {relpath}) not found in lib debs")
            todo.append((found[0], interp.lstrip("/")))
        runpath = [d.lstrip("/") for d in elf.runpath() if not d.startswith("$")]
        for soname in elf.needed():
            own = _find_in_trees_at(soname, src_root, runpath)
            hit = own if own is not None else _find_lib(soname, lib_trees)
            if hit is None:
                raise ImageBuildError(f"shared library {soname} (for {relpath}) not found")
            todo.append(hit)


def _find_in_trees_at(soname: str, root: Path, dirs: Sequence[str]) -> tuple[Path, str] | None:
    for d in dirs:
        cand = root / d / soname
        if cand.is_symlink() or cand.exists():
            return (_resolve_in(cand, root), f"{d}/{soname}")
    return None


def _resolve_in(path: Path, root: Path) -> Path:
    """Follow symlinks inside an extracted tree (absolute targets are relative to `root`)."""
    for _ in range(20):
        if not path.is_symlink():
            return path
        t = os.readlink(path)
        path = root / t.lstrip("/") if t.startswith("/") else path.parent / t
    raise ImageBuildError(f"symlink loop at {path}")


def _find_in_trees(rel: str, trees: Sequence[Path]) -> tuple[Path, Path] | None:
    for t in trees:
        p = t / rel
        if p.is_symlink() or p.exists():
            return (_resolve_in(p, t), t)
    return None


def _find_lib(soname: str, trees: Sequence[Path]) -> tuple[Path, str] | None:
    for t in trees:
        for d in ("lib", "usr/lib"):
            base = t / d
            if not base.is_dir():
                continue
            for sub in sorted(base.iterdir()):
                cand = sub / soname if sub.is_dir() else None
                if cand is not None and (cand.is_symlink() or cand.exists()):
                    return (_resolve_in(cand, t), cand.relative_to(t).as_posix())
            cand = base / soname
            if cand.is_symlink() or cand.exists():
                return (_resolve_in(cand, t), cand.relative_to(t).as_posix())
    return None


def rootfs_tree(
    console: str,
    root: Path,
    busybox: bytes,
    applets: list[str],
    trees: dict[str, Path],
) -> None:
    for d in (
        "bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "etc/dropbear", "etc/udhcpc",
        "dev", "proc", "sys", "run", "tmp", "root", "home", "mnt", "var/lib/cloud", "var/log",
        "var/run",
    ):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    bb = root / "bin/busybox"
    bb.write_bytes(busybox)
    bb.chmod(0o755)
    for name in applets:
        if name != "busybox":
            (root / "bin" / name).symlink_to("busybox")
    (root / "sbin/init").symlink_to("../bin/busybox")
    (root / "usr/bin/env").symlink_to("../../bin/busybox")

    lib_trees = [trees[p] for p in LIB_PACKAGES]
    for rel in DROPBEAR_FILES:
        copy_elf_with_libs(trees["dropbear-bin"], rel, lib_trees, root)
    _add_sudo(root, trees, lib_trees)
    # iputils' ping, not busybox's: it uses ICMP datagram sockets, which every user may open
    # (rcS sets net.ipv4.ping_group_range); busybox 1.35's needs a raw socket, so root
    for name in ("ping", "ping6"):
        (root / "bin" / name).unlink(missing_ok=True)  # busybox applet links
    copy_elf_with_libs(trees["iputils-ping"], "bin/ping", lib_trees, root)
    (root / "bin/ping6").symlink_to("ping")
    # The default user's login shell, as on Debian's cloud images: busybox's shell runs its
    # own applets before anything in PATH (so `ping` would be busybox's there).
    copy_elf_with_libs(trees["bash"], "bin/bash", lib_trees, root)

    def put(rel: str, data: bytes, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)

    put("etc/inittab", guest_file("inittab").replace(b"@CONSOLE@", console.encode()))
    put("etc/init.d/rcS", guest_file("rcS"), 0o755)
    put("etc/init.d/rcK", guest_file("rcK"), 0o755)
    put("etc/udhcpc/default.script", guest_file("udhcpc.script"), 0o755)
    for name in (
        "cumulo-powerbtn", "cumulo-hotplug", "cumulo-netup", "cumulo-userdata",
        "cumulo-cloudconfig",
    ):  # fmt: skip
        put(f"sbin/{name}", guest_file(name), 0o755)
    put("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    put("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
    put("etc/group", b"root:x:0:\ntty:x:5:\n")
    put("etc/shells", b"/bin/sh\n/bin/ash\n/bin/bash\n")
    put("etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")
    put("etc/hostname", b"tiny\n")
    put("etc/hosts", b"127.0.0.1\tlocalhost\n")
    put("etc/resolv.conf", b"")
    put("etc/profile", b'export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nexport PS1="\\u@\\h:\\w\\$ "\n')
    put(
        "etc/os-release",
        b'NAME="cumulo tiny"\nID=cumulo-tiny\nPRETTY_NAME="cumulo tiny (busybox+dropbear)"\n',
    )


def _add_sudo(root: Path, trees: dict[str, Path], lib_trees: Sequence[Path]) -> None:
    for rel in SUDO_FILES:
        copy_elf_with_libs(trees["sudo"], rel, lib_trees, root)
    (root / "usr/bin/sudo").chmod(0o4755)  # setuid root (mke2fs -d keeps mode and owner)
    pam = trees["libpam-modules"]
    for name in PAM_MODULES:
        found = sorted(pam.glob(f"*lib/*/security/{name}"))
        if not found:
            raise ImageBuildError(f"{name} not found in libpam-modules")
        rel = found[0].relative_to(pam).as_posix()
        copy_elf_with_libs(pam, rel, lib_trees, root)
    for d, mode in (("etc/sudoers.d", 0o750), ("etc/pam.d", 0o755)):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(mode)
    for rel, data, mode in (
        ("etc/sudoers", SUDOERS, 0o440),
        ("etc/pam.d/sudo", PAM_SUDO, 0o644),
        ("etc/pam.d/other", PAM_OTHER, 0o644),
    ):
        (root / rel).write_bytes(data)
        (root / rel).chmod(mode)
