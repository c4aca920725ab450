"""The tiny image's user-data readers (cumulo-userdata, cumulo-cloudconfig), run by the same
busybox the image has (busybox-static, which ./bootstrap installs), on the user-data cumulo's
seed writer makes. The whole path in a real guest is in tests/integration/test_tiny_boot.py."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from importlib import resources
from pathlib import Path

import pytest

from cumulo.agent.storage.user_data import compose_user_data

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")
FQDN = "web-1.default.local-1a.cumulo.internal"


def _script(name: str) -> str:
    return str(resources.files("cumulo.images").joinpath("tiny", name))


def _parts(tmp_path: Path, user_data: bytes | None) -> dict[str, bytes]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "user-data"
    src.write_bytes(compose_user_data(hostname="web-1", fqdn=FQDN, user_data=user_data))
    out = tmp_path / "parts"
    assert BUSYBOX is not None
    subprocess.run([BUSYBOX, "sh", _script("cumulo-userdata"), str(src), str(out)], check=True)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _settings(tmp_path: Path, parts: dict[str, bytes]) -> list[tuple[str, str]]:
    files = []
    for name, data in parts.items():
        if name.endswith(".cloud-config"):
            f = tmp_path / f"cc-{name}"
            f.write_bytes(data)
            files.append(str(f))
    assert BUSYBOX is not None
    out = subprocess.run([BUSYBOX, "sh", _script("cumulo-cloudconfig"), "cumulo", *files],
                         check=True, capture_output=True, text=True).stdout
    return [tuple(line.split("\t", 1)) for line in out.splitlines()]  # type: ignore[misc]


OURS = [("hostname", "web-1"), ("fqdn", FQDN)]


def test_no_user_data_gives_our_hostname_and_fqdn(tmp_path: Path) -> None:
    parts = _parts(tmp_path, None)
    assert list(parts) == ["001.cloud-config"]
    assert _settings(tmp_path, parts) == OURS


def test_a_user_script_still_runs_and_the_fqdn_comes_too(tmp_path: Path) -> None:
    script = b"#!/bin/sh\necho hello\n"
    for given in (script, gzip.compress(script)):
        parts = _parts(tmp_path / str(len(given)), given)
        assert parts == {"001.cloud-config": parts["001.cloud-config"], "002.script": script}
        assert _settings(tmp_path, parts) == OURS


def test_a_user_cloud_config_comes_after_ours_so_it_wins(tmp_path: Path) -> None:
    cfg = (
        b"#cloud-config\n"
        b"fqdn: other.example.org  # mine\n"
        b"ssh_authorized_keys:\n"
        b'  - "ssh-ed25519 AAAA one"\n'
        b"users:\n"
        b"  - default\n"
        b"  - name: someone\n"
        b"    sudo: ALL=(ALL) ALL\n"
        b"  - name: cumulo\n"
        b"    groups: [adm]\n"
        b"    sudo: false\n"
    )
    parts = _parts(tmp_path, cfg)
    assert list(parts) == ["001.cloud-config", "002.cloud-config"]
    assert _settings(tmp_path, parts) == [
        *OURS, ("fqdn", "other.example.org"), ("key", "ssh-ed25519 AAAA one"),
        ("sudo", "false"),
    ]  # fmt: skip


def test_a_user_mime_message_keeps_its_parts_in_order(tmp_path: Path) -> None:
    theirs = MIMEMultipart()
    theirs.attach(MIMEText(
        "#cloud-config\nsystem_info:\n  default_user:\n    name: cumulo\n"
        "    sudo: \"ALL=(ALL) NOPASSWD: /bin/mount\"\n", "cloud-config"))
    theirs.attach(MIMEText("#!/bin/sh\necho two\n", "x-shellscript"))
    theirs.attach(MIMEText("#cloud-boothook\necho no\n", "cloud-boothook"))
    parts = _parts(tmp_path, theirs.as_bytes())
    assert list(parts) == ["001.cloud-config", "002.cloud-config", "003.script"]
    assert parts["003.script"].startswith(b"#!/bin/sh\necho two\n")
    assert _settings(tmp_path, parts) == [*OURS, ("sudo", "ALL=(ALL) NOPASSWD: /bin/mount")]
