"""The bare-metal images: the whole-disk tiny image's layout, the deploy ramdisk and ISO, the
deploy's kernel command line (checked before it is written), and the build cache."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cumulo.images import cached_build, deploy_iso, wholedisk
from cumulo.images.debs import ImageBuildError
from cumulo.images.digest import file_digest

SHA = "ab" * 32
TOOLS = ("mformat", "mcopy", "mtype", "syslinux", "xorriso", "qemu-img", "resize2fs")
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason="needs mtools, syslinux, xorriso, qemu-utils")


def _entries(table: bytes) -> list[tuple[int, int, int, int]]:
    """(status, type, first sector, sectors) of the 4 MBR partition entries."""
    out = []
    for i in range(4):
        status, _, ptype, _, start, size = struct.unpack_from("<B3sB3sII", table, 446 + 16 * i)
        out.append((status, ptype, start, size))
    return out


def test_mbr_has_a_bootable_fat_partition_then_the_root() -> None:
    sector = wholedisk.mbr(b"\xeb\x63" + bytes(100), 0x1234ABCD)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert sector[:2] == b"\xeb\x63"
    assert struct.unpack_from("<I", sector, 440)[0] == 0x1234ABCD
    assert _entries(sector) == [
        (0x80, 0x0E, 2048, wholedisk.BOOT_SIZE // 512),
        (0, 0x83, wholedisk.ROOT_START // 512, wholedisk.ROOT_SIZE // 512),
        (0, 0, 0, 0), (0, 0, 0, 0),
    ]
    with pytest.raises(ImageBuildError, match="at most 440"):
        wholedisk.mbr(bytes(441), 0)


def test_the_disk_boots_its_root_from_the_second_partition() -> None:
    line = wholedisk.disk_cmdline()
    assert "root=/dev/vda2 " in line and "console=ttyS0" in line
    assert f"APPEND {line}\n" in wholedisk.syslinux_cfg(line)


def test_deploy_cmdline_names_the_urls_and_refuses_what_could_break_out() -> None:
    line = deploy_iso.deploy_cmdline("http://10.0.2.100/v1/deploy/t0k/image", SHA,
                                     "http://10.0.2.100/v1/deploy/t0k/report",
                                     "http://10.0.2.100/v1/deploy/t0k/seed")
    assert f"cumulo.sha256={SHA}" in line and "cumulo.disk=/dev/vda" in line
    assert "cumulo.image=http://10.0.2.100/v1/deploy/t0k/image" in line
    assert "cumulo.seed=http://10.0.2.100/v1/deploy/t0k/seed" in line
    for bad in ("http://x/a b", "http://x/a'b", "http://x/$(reboot)", "https://x/a", "x"):
        with pytest.raises(ImageBuildError, match="not a deploy URL"):
            deploy_iso.deploy_cmdline(bad, SHA, "http://x/r", "http://x/s")
        with pytest.raises(ImageBuildError, match="not a deploy URL"):
            deploy_iso.deploy_cmdline("http://x/i", SHA, "http://x/r", bad)
    with pytest.raises(ImageBuildError, match="not a sha256"):
        deploy_iso.deploy_cmdline("http://x/i", SHA.upper(), "http://x/r", "http://x/s")
    with pytest.raises(ImageBuildError, match="not a disk"):
        deploy_iso.deploy_cmdline("http://x/i", SHA, "http://x/r", "http://x/s",
                                  disk="/dev/vda;reboot")


def test_a_cached_build_is_reused_and_new_inputs_build_anew(tmp_path: Path) -> None:
    calls: list[str] = []

    def build(work: Path, out: Path) -> dict[str, object]:
        calls.append(work.name)
        (out / "f").write_text("x")
        return {"n": len(calls)}

    a = cached_build.ensure_built(tmp_path, "x86_64", "1" * 64, ("f",), build)
    assert cached_build.ensure_built(tmp_path, "x86_64", "1" * 64, ("f",), build) == a
    assert len(calls) == 1 and cached_build.read_facts(a)["inputs_sha256"] == "1" * 64
    (a / "f").unlink()  # damaged: built again
    assert cached_build.ensure_built(tmp_path, "x86_64", "1" * 64, ("f",), build) == a
    b = cached_build.ensure_built(tmp_path, "x86_64", "2" * 64, ("f",), build)
    assert b != a and len(calls) == 3
    assert not list(tmp_path.glob(".build-*"))  # no scratch left behind


@needs_tools
def test_the_whole_disk_image_holds_syslinux_the_kernel_and_the_root() -> None:
    d = wholedisk.ensure_tiny_disk()
    facts = cached_build.read_facts(d)
    raw = d / "disk.raw"
    assert (facts["size"], facts["sha256"]) == file_digest(raw)
    assert (facts["gz_size"], facts["gz_sha256"]) == file_digest(d / "disk.raw.gz")
    with raw.open("rb") as f:
        sector = f.read(512)
        f.seek(wholedisk.ROOT_START + 1024 + 0x38)
        ext_magic = f.read(2)
    assert _entries(sector)[0][:3] == (0x80, 0x0E, 2048)
    assert ext_magic == b"\x53\xef"  # the ext4 superblock of partition 2
    fat = f"{raw}@@{wholedisk.BOOT_START}"
    listing = subprocess.run(["mdir", "-a", "-i", fat, "::"], capture_output=True, text=True,
                             check=True).stdout.upper()
    for name in ("LDLINUX", "VMLINUZ", "INITRD", "SYSLINUX"):
        assert name in listing
    cfg = subprocess.run(["mtype", "-i", fat, "::/syslinux.cfg"], capture_output=True,
                         text=True, check=True).stdout
    assert "root=/dev/vda2" in cfg


@needs_tools
def test_the_deploy_ramdisk_overrides_init_and_the_iso_carries_the_cmdline() -> None:
    r = deploy_iso.ensure_deploy_ramdisk()
    cpio = gzip.decompress((r / "deploy.img").read_bytes())  # both archives, in order
    assert cpio.rfind(deploy_iso.deploy_init()) > cpio.find(b"cumulo tiny initramfs")
    assert b"bin/wget" in cpio and b"bin/sha256sum" in cpio
    # sfdisk, with its loader and libraries (the seed's partition)
    for path in (b"sbin/sfdisk", b"lib64/ld-linux-x86-64.so.2", b"libfdisk.so.1", b"libc.so.6"):
        assert path in cpio, path
    line = deploy_iso.deploy_cmdline("http://10.0.2.100/i", SHA, "http://10.0.2.100/r",
                                     "http://10.0.2.100/s")
    iso = deploy_iso.build_iso(r, line)
    assert iso[32769:32774] == b"CD001"
    assert line.encode() in iso and b"ISOLINUX" in iso
    assert json.dumps(cached_build.read_facts(r)).count("inputs_sha256") == 1
