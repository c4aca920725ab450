"""The disk digest a cold move checks its copy by: the same for the same content whatever
the format, backing chain or allocation; different when one byte differs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cumulo.agent.drivers.disk_digest import content_digest, raw_digest

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _io(disk: Path, *commands: str) -> None:
    argv = ["qemu-io"]
    for c in commands:
        argv += ["-c", c]
    subprocess.run([*argv, str(disk)], check=True, capture_output=True)


async def test_the_same_content_has_the_same_digest_whatever_its_layout(tmp_path: Path) -> None:
    base, overlay, flat = tmp_path / "base.qcow2", tmp_path / "top.qcow2", tmp_path / "flat.raw"
    _img("create", "-f", "qcow2", str(base), "8M")
    _io(base, "write -P 0x11 0 128k", "write -P 0x22 3M 64k")
    _img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    _io(overlay, "write -P 0x33 5M 4k", "write -z 3M 64k")  # a zeroed block is no data
    _img("convert", "-O", "raw", str(overlay), str(flat))
    digest = await content_digest(overlay)
    assert digest.startswith("sha256:") and digest == await content_digest(flat)
    assert not list(tmp_path.glob("*.digest.raw"))  # its scratch file is gone

    _io(flat, "write -P 0x34 5M 1")  # one byte
    assert await content_digest(flat) != digest
    _img("resize", "-f", "raw", str(flat), "16M")  # a bigger disk, the same bytes: different
    _io(flat, "write -P 0x33 5M 1")
    assert await content_digest(flat) != digest


def test_a_shorter_raw_file_reads_as_zeros_after_its_end(tmp_path: Path) -> None:
    short, long = tmp_path / "short", tmp_path / "long"
    short.write_bytes(b"x" * 1000)
    long.write_bytes(b"x" * 1000 + bytes(300_000))
    assert raw_digest(short, 300_000) == raw_digest(long, 300_000) != raw_digest(short, 1000)
