"""Untrusted image files: each hostile one is refused with a stable code, good ones accepted.

Files are made with `qemu-img create` and by hand (header bytes patched), never by reading a
real secret: a backing file "pointing at /etc/shadow" is only a name in a header here.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cumulo.domain.errors import CumuloError
from cumulo.images import qemu_img

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils")

GIB = 2**30


def qimg(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def refused(path: Path, code: str, max_virtual_size: int = 64 * GIB) -> str:
    with pytest.raises(CumuloError) as e:
        qemu_img.inspect(path, max_virtual_size=max_virtual_size)
    assert e.value.code == code, e.value.message
    assert "\n" not in e.value.message
    return e.value.message


def mbr_raw(path: Path, size: int = 4 * 2**20) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(510)
        f.write(b"\x55\xaa")
    return path


def ext4_raw(path: Path) -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path), "8M"], check=True, capture_output=True)
    return path


def qcow2_with_data(tmp: Path, name: str = "data.qcow2") -> Path:
    raw = mbr_raw(tmp / f"{name}.src", 8 * 2**20)
    with raw.open("r+b") as f:
        f.seek(2**20)
        f.write(b"\xa5" * 3 * 2**20)  # data in several clusters
    out = tmp / name
    qimg("convert", "-f", "raw", "-O", "qcow2", str(raw), str(out))
    raw.unlink()
    return out


def test_a_clean_qcow2_is_accepted_and_converted(tmp_path: Path) -> None:
    src = qcow2_with_data(tmp_path)
    info = qemu_img.inspect(src, max_virtual_size=GIB)
    assert (info.format, info.virtual_size) == ("qcow2", 8 * 2**20)
    dest = tmp_path / "out.qcow2"
    qemu_img.convert_to_qcow2(src, info.format, dest)
    assert qemu_img.info(dest, "qcow2")["virtual-size"] == 8 * 2**20
    qimg("compare", "-f", "qcow2", "-F", "qcow2", str(src), str(dest))


@pytest.mark.parametrize("make", [mbr_raw, ext4_raw])
def test_a_raw_disk_is_accepted(tmp_path: Path, make: object) -> None:
    assert callable(make)
    path = make(tmp_path / "disk.raw")
    info = qemu_img.inspect(path, max_virtual_size=GIB)
    assert info.format == "raw"
    assert info.virtual_size == path.stat().st_size
    dest = tmp_path / "out.qcow2"
    qemu_img.convert_to_qcow2(path, "raw", dest)
    qimg("compare", "-f", "raw", "-F", "qcow2", str(path), str(dest))


def test_backing_file_made_by_qemu_img_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.qcow2"
    # -u: do not open the backing file; only its name is written into the header.
    qimg("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", "-u", str(path), "1M")
    assert "backing file" in refused(path, "image_backing_file")


def test_backing_file_patched_in_by_hand_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hand.qcow2"
    qimg("create", "-f", "qcow2", str(path), "1M")
    data = bytearray(path.read_bytes())
    name = b"/etc/shadow"
    data[0x1000 : 0x1000 + len(name)] = name
    data[8:16] = struct.pack(">Q", 0x1000)  # backing_file_offset
    data[16:20] = struct.pack(">I", len(name))  # backing_file_size
    path.write_bytes(bytes(data))
    refused(path, "image_backing_file")


def test_json_backing_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "json.qcow2"
    spec = 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}'
    qimg("create", "-f", "qcow2", "-F", "raw", "-b", spec, "-u", str(path), "1M")
    refused(path, "image_backing_file")


def test_external_data_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ext.qcow2"
    qimg("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(path), "1M")
    refused(path, "image_data_file")
    (tmp_path / "data.raw").unlink()  # also when the data file is missing
    refused(path, "image_data_file")


def test_encrypted_qcow2_is_refused(tmp_path: Path) -> None:
    # Set the header's crypt_method (offset 32) to 1, legacy AES: qemu-img reports the image as
    # encrypted without needing a key. Creating a LUKS image instead runs a PBKDF benchmark
    # that failed under CI load whatever the iter-time budget.
    path = tmp_path / "enc.qcow2"
    qimg("create", "-f", "qcow2", str(path), "1M")
    with path.open("r+b") as f:
        f.seek(32)
        f.write((1).to_bytes(4, "big"))
    refused(path, "image_encrypted")


def test_truncated_qcow2_is_refused(tmp_path: Path) -> None:
    path = qcow2_with_data(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    refused(path, "corrupt_image")


def test_qcow2_header_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.qcow2"
    qimg("create", "-f", "qcow2", str(path), "64M")
    path.write_bytes(path.read_bytes()[:300])
    refused(path, "corrupt_image")


def test_qcow2_magic_with_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.qcow2"
    path.write_bytes(b"QFI\xfb" + b"\x00\x00\x00\x07" + b"\x11" * 4088)
    refused(path, "corrupt_image")


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "random.img"
    data = bytearray(b"\x9c" * 4 * 2**20)
    data[:4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(data))
    assert "not a disk image" in refused(path, "unrecognized_image")


def test_raw_of_odd_size_is_refused(tmp_path: Path) -> None:
    path = mbr_raw(tmp_path / "odd.raw", 4097)
    refused(path, "unrecognized_image")


def test_zero_size_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.img"
    path.write_bytes(b"")
    refused(path, "empty_image")


def test_zero_virtual_size_qcow2_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "zero.qcow2"
    qimg("create", "-f", "qcow2", str(path), "0")
    refused(path, "empty_image")


def test_compressed_image_is_refused_with_a_hint(tmp_path: Path) -> None:
    raw = mbr_raw(tmp_path / "disk.raw")
    path = tmp_path / "disk.raw.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()))
    assert "gunzip" in refused(path, "unsupported_image_format")


def test_other_formats_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "disk.vmdk"
    qimg("create", "-f", "vmdk", str(path), "1M")
    assert "vmdk" in refused(path, "unsupported_image_format")


def test_virtual_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.qcow2"
    qimg("create", "-f", "qcow2", str(path), "2T")
    refused(path, "image_too_large", max_virtual_size=64 * GIB)


def test_convert_failure_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "gone.raw"
    dest = tmp_path / "out.qcow2"
    with pytest.raises(CumuloError):
        qemu_img.convert_to_qcow2(src, "raw", dest)
    assert not dest.exists()
