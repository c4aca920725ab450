"""Pure pieces of the tiny image builder: module ordering, ELF reading, cpio, digests."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cumulo.domain.arch import Arch
from cumulo.images import debs, kmod, tiny
from cumulo.images.cpio import CpioArchive
from cumulo.images.debs import DebPackage, _fields, kernel_of

MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko
""".replace("\\\n", "")


def _names(paths: list[str]) -> list[str]:
    return [kmod.module_name_of(p) for p in paths]


def test_load_order_puts_dependencies_first() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    order = _names(
        kmod.load_order(
            deps,
            ["virtio_pci", "virtio_blk", "ext4", "isofs", "virtio_net", "virtio-rng", "button"],
            builtin=["ext4", "jbd2"],
            optional=["button"],
        )
    )
    assert order == [
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "virtio_blk",
        "cdrom",
        "isofs",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_rng",
    ]
    for i, name in enumerate(order):  # every dependency is loaded before its user
        assert all(d in order[:i] for d in deps[name][1])


def test_load_order_missing_required_module_is_an_error() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    with pytest.raises(kmod.ModuleResolutionError, match="gpio_keys"):
        kmod.load_order(deps, ["virtio_blk", "gpio_keys"])


def test_load_order_detects_cycles() -> None:
    deps = kmod.parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(kmod.ModuleResolutionError, match="cycle"):
        kmod.load_order(deps, ["a"])


def test_builtin_names_normalise_dashes() -> None:
    text = "kernel/fs/ext4/ext4.ko\nkernel/drivers/gpio/gpio-pl061.ko\n"
    assert kmod.builtin_names(text) == {"ext4", "gpio_pl061"}


def test_elf_reader_on_a_host_binary() -> None:
    ls = Path(shutil.which("ls") or "/bin/ls")
    elf = kmod.ElfFile.open(ls.resolve())
    assert "libc.so.6" in elf.needed()
    interp = elf.interpreter()
    assert interp is not None and "ld-linux" in interp


def test_modinfo_reads_a_synthetic_module(tmp_path: Path) -> None:
    # A minimal ELF64 with a .modinfo section, built by hand.
    import struct

    modinfo = b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0"
    shstr = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    shstr_off = data_off + len(modinfo)
    sh_off = (shstr_off + len(shstr) + 7) // 8 * 8
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 2)
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, data_off, len(modinfo), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0),
    ]
    blob = ehdr + modinfo + shstr
    blob += b"\0" * (sh_off - len(blob)) + b"".join(sections)
    mod = tmp_path / "kernel" / "drivers" / "block" / "virtio_blk.ko"
    mod.parent.mkdir(parents=True)
    mod.write_bytes(blob)
    assert kmod.modinfo(mod)["depends"] == "virtio,virtio_ring"
    assert kmod.modules_dep_text(tmp_path) == "kernel/drivers/block/virtio_blk.ko:\n"


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (cpio -i)")
def test_cpio_archive_extracts_with_busybox(tmp_path: Path) -> None:
    a = CpioArchive()
    a.add_dir("bin")
    a.add_file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    a.add_symlink("bin/sh", "tool")
    a.add_dir("etc")
    a.add_file("etc/empty", b"")
    a.add_file("etc/odd", b"x" * 5)
    blob = a.to_bytes()
    assert len(blob) % 512 == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["busybox", "cpio", "-i", "-d"], input=blob, cwd=out, check=True, capture_output=True
    )
    assert (out / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "bin/sh").is_symlink() and (out / "bin/sh").readlink() == Path("tool")
    assert (out / "etc/empty").read_bytes() == b""
    assert (out / "etc/odd").read_bytes() == b"xxxxx"


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static")
def test_busybox_applets_from_the_binary_table() -> None:
    blob = Path("/bin/busybox").read_bytes()
    applets = tiny.busybox_applets(blob)
    listed = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(applets) == sorted(listed)


def test_apt_fields_and_kernel_dependency() -> None:
    stanza = (
        "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nArchitecture: amd64\n"
        "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n more\n"
    )
    f = _fields(stanza)
    assert f["Depends"] == "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    assert f["Description"] == "x\nmore"
    meta = DebPackage("linux-image-cloud-amd64", "amd64", "6.1.192-2", "0" * 64, f["Depends"])
    assert kernel_of(meta) == "linux-image-6.1.0-56-cloud-amd64"
    assert DebPackage("busybox-static", "arm64", "1:1.35", "x", "").filename == (
        "busybox-static_1%3a1.35_arm64.deb"
    )


def test_inputs_digest_tracks_package_versions() -> None:
    a = [DebPackage("busybox-static", "amd64", "1", "a" * 64, "")]
    b = [DebPackage("busybox-static", "amd64", "2", "b" * 64, "")]
    assert tiny.inputs_digest(Arch.X86_64, a) == tiny.inputs_digest(Arch.X86_64, list(a))
    assert tiny.inputs_digest(Arch.X86_64, a) != tiny.inputs_digest(Arch.X86_64, b)
    assert tiny.inputs_digest(Arch.X86_64, a) != tiny.inputs_digest(Arch.ARM64, a)


def test_kernel_cmdline_names_the_serial_console() -> None:
    assert "console=ttyS0" in tiny.kernel_cmdline(Arch.X86_64)
    assert "console=ttyAMA0" in tiny.kernel_cmdline(Arch.ARM64)
    for arch in Arch:
        assert "root=/dev/vda" in tiny.kernel_cmdline(arch)


def test_initramfs_holds_init_and_modules_in_order(tmp_path: Path) -> None:
    moddir = tmp_path / "mods"
    for rel in ("a/x.ko", "b/y.ko"):
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(rel.encode())
    busybox = b"\0[\0[[\0sh\0mount\0switch_root\0insmod\0\0"
    blob = tiny._initramfs(moddir, ["b/y.ko", "a/x.ko"], busybox, tiny.busybox_applets(busybox))
    raw = gzip.decompress(blob)
    assert b"init\0" in raw and b"TRAILER!!!" in raw
    assert b"lib/modules/y.ko\0" in raw
    assert b"y.ko\nx.ko\n" in raw  # etc/modules.order


def test_apt_state_key_follows_apt_files(tmp_path: Path) -> None:
    lists, status = tmp_path / "lists", tmp_path / "status"
    lists.mkdir()
    (lists / "deb.debian.org_Packages").write_text("Package: a\n")
    status.write_text("Package: b\n")
    roots = (str(lists), str(status), str(tmp_path / "absent"))
    key = debs.apt_state_key(roots)
    assert debs.apt_state_key(roots) == key
    (lists / "deb.debian.org_Packages").write_text("Package: a2\n")  # apt-get update
    assert debs.apt_state_key(roots) != key
    key = debs.apt_state_key(roots)
    (lists / "security_Packages").write_text("")  # a new source
    assert debs.apt_state_key(roots) != key
    key = debs.apt_state_key(roots)
    status.write_text("Package: b2\n")  # an install
    assert debs.apt_state_key(roots) != key


def test_resolved_packages_are_reused_while_apt_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    meta = DebPackage("linux-image-cloud-amd64", "amd64", "1", "m" * 64,
                      "linux-image-6.1.0-9-cloud-amd64 (= 6.1.1)")
    kernel = DebPackage("linux-image-6.1.0-9-cloud-amd64", "amd64", "6.1.1", "k" * 64, "")

    def show_many(specs: list[tuple[str, str]]) -> list[DebPackage]:
        asked.append("show_many")
        return [meta, *(DebPackage(n, a, "2", "u" * 64, "") for n, a in specs[1:])]

    def show(name: str, arch: str) -> DebPackage:
        asked.append(name)
        return kernel

    apt_key = ["state-1"]
    monkeypatch.setattr(debs, "show_many", show_many)
    monkeypatch.setattr(debs, "show", show)
    monkeypatch.setattr(debs, "apt_state_key", lambda: apt_key[0])

    def resolve() -> list[DebPackage]:
        return tiny._resolve_packages(Arch.X86_64, tmp_path)

    first = resolve()
    assert asked == ["show_many", kernel.name] and first[0] == kernel
    assert resolve() == first and len(asked) == 2, "apt unchanged: not asked again"

    apt_key[0] = "state-2"  # apt-get update, or a package installed
    assert resolve() == first and len(asked) == 4

    (tmp_path / ".resolved-x86_64.json").write_text("{damaged")
    assert resolve() == first and len(asked) == 6


def test_on_build_is_called_for_a_build_and_not_for_a_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkgs = [DebPackage("linux-image-x", "amd64", "1", "k" * 64, "")]
    monkeypatch.setattr(tiny, "_resolve_packages", lambda arch, d: pkgs)
    monkeypatch.setattr(debs, "require_tool", lambda name: name)

    def fake_build(arch: Arch, packages: object, digest: str, deb_dir: Path, work: Path,
                   out: Path) -> None:  # what a real build leaves, in milliseconds
        for f in ("vmlinuz", "initrd.img", "rootfs.qcow2"):
            (out / f).write_bytes(b"x")
        (out / "image.json").write_text(json.dumps({"inputs_sha256": digest}))

    monkeypatch.setattr(tiny, "_build", fake_build)
    builds: list[str] = []
    link = tiny.ensure_tiny_image(Arch.X86_64, tmp_path, on_build=lambda: builds.append("b"))
    assert builds == ["b"] and (link / "image.json").is_file()
    assert tiny.ensure_tiny_image(Arch.X86_64, tmp_path, on_build=lambda: builds.append("b"))
    assert builds == ["b"], "the image built from the same inputs is reused"
