"""The NoCloud seed ISO, read back with pycdlib (the real library, no mocks)."""

from __future__ import annotations

import email
import email.policy
import gzip
import io
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pycdlib
import pytest

from cumulo.agent.storage.seed import build_seed_iso, render_meta_data
from cumulo.agent.storage.user_data import compose_user_data


def _read(iso_path: Path) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        rr: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            rr[name] = buf.getvalue()
        joliet: dict[str, bytes] = {}
        for name in rr:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, joliet_path="/" + name)
            joliet[name] = buf.getvalue()
        assert iso.has_rock_ridge()
        assert iso.has_joliet()
    finally:
        iso.close()
    return label, rr, joliet


def test_seed_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    user_data = b"#!/bin/sh\necho hello > /dev/console\n"
    build_seed_iso(
        path,
        instance_id="i-0123abcd",
        hostname="web-1",
        user_data=user_data,
        ssh_public_keys=["ssh-ed25519 AAAAC3Nza one@host", "ssh-rsa AAAAB3Nza two@host"],
        network_config="version: 2\nethernets: {}\n",
    )
    label, rr, joliet = _read(path)
    assert label == "cidata"
    assert set(rr) == {"meta-data", "user-data", "network-config"}
    assert rr == joliet
    assert rr["user-data"] == user_data
    assert rr["network-config"] == b"version: 2\nethernets: {}\n"
    assert rr["meta-data"].decode() == (
        'instance-id: "i-0123abcd"\n'
        'local-hostname: "web-1"\n'
        "public-keys:\n"
        '  - "ssh-ed25519 AAAAC3Nza one@host"\n'
        '  - "ssh-rsa AAAAB3Nza two@host"\n'
    )
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]  # no temp file left behind


def test_seed_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "seed.iso"
    build_seed_iso(path, instance_id="i-1", hostname="tiny")
    label, rr, _ = _read(path)
    assert label == "cidata"
    assert set(rr) == {"meta-data", "user-data"}
    assert rr["user-data"] == b"#cloud-config\n"
    assert b"public-keys" not in rr["meta-data"]


def test_seed_replaces_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    build_seed_iso(path, instance_id="i-1", hostname="one")
    build_seed_iso(path, instance_id="i-2", hostname="two")
    _, rr, _ = _read(path)
    assert b'local-hostname: "two"' in rr["meta-data"]
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


@pytest.mark.parametrize("bad", ["", "a\nb"])
def test_seed_rejects_multiline_values(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        build_seed_iso(tmp_path / "s.iso", instance_id="i-1", hostname=bad)
    assert not list(tmp_path.iterdir())


def test_meta_data_quotes_awkward_values() -> None:
    text = render_meta_data(instance_id='i-"x"', hostname="h: 1", ssh_public_keys=["  ", "k"])
    assert text == 'instance-id: "i-\\"x\\""\nlocal-hostname: "h: 1"\npublic-keys:\n  - "k"\n'


FQDN = "web-1.default.local-1a.cumulo.internal"
BOUNDARY = "===============cumulo-c148ee27978274b99da847e2cc8e727e=="
OUR_CLOUD_CONFIG = (
    "#cloud-config\n"
    'hostname: "web-1"\n'
    f'fqdn: "{FQDN}"\n'
    "prefer_fqdn_over_hostname: false\n"
    "manage_etc_hosts: localhost\n"
)


def test_seed_with_fqdn_golden(tmp_path: Path) -> None:
    """The FQDN as cloud-init reads it: meta-data's local-hostname, and our #cloud-config part
    first in a multipart user-data whose second part is the user's script, byte for byte."""
    path = tmp_path / "seed.iso"
    build_seed_iso(
        path, instance_id="i-0123abcd", hostname="web-1", fqdn=FQDN,
        user_data=b"#!/bin/sh\necho hello > /dev/console\n",
    )  # fmt: skip
    _, rr, _ = _read(path)
    assert rr["meta-data"].decode() == (
        f'instance-id: "i-0123abcd"\nlocal-hostname: "{FQDN}"\n'
    )
    assert rr["user-data"].decode() == (
        "Content-Type: multipart/mixed;\n"
        f' boundary="{BOUNDARY}"\n'
        "MIME-Version: 1.0\n"
        "\n"
        f"--{BOUNDARY}\n"
        'Content-Type: text/cloud-config; charset="us-ascii"\n'
        "MIME-Version: 1.0\n"
        "Content-Transfer-Encoding: 7bit\n"
        'Content-Disposition: attachment; filename="cumulo-instance.cfg"\n'
        "\n"
        f"{OUR_CLOUD_CONFIG}\n"
        f"--{BOUNDARY}\n"
        "Content-Type: text/x-not-multipart\n"
        "MIME-Version: 1.0\n"
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="user-data"\n'
        "\n"
        "IyEvYmluL3NoCmVjaG8gaGVsbG8gPiAvZGV2L2NvbnNvbGUK\n"
        "\n"
        f"--{BOUNDARY}--\n"
    )


def test_seed_with_fqdn_and_no_user_data_is_our_cloud_config(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    build_seed_iso(path, instance_id="i-1", hostname="web-1", fqdn=FQDN)
    _, rr, _ = _read(path)
    assert rr["user-data"].decode() == OUR_CLOUD_CONFIG


def _leaves(data: bytes) -> list[tuple[str, bytes]]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.get_content_maintype() != "multipart":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out.append((part.get_content_type(), payload))
    return out


def test_user_data_of_every_kind_keeps_its_parts() -> None:
    """cloud-init walks the MIME tree: the user's document must come out of it unchanged,
    after ours (its keys then win the merge), whatever it was."""
    ours = ("text/cloud-config", OUR_CLOUD_CONFIG.encode())
    script = b"#!/bin/sh\necho \xc3\xa9t\xc3\xa9\n--not-a-boundary\n"
    cfg = b"#cloud-config\nhostname: other\n"
    for given, want in (
        (script, [ours, ("text/x-not-multipart", script)]),
        (cfg, [ours, ("text/x-not-multipart", cfg)]),
        (gzip.compress(script), [ours, ("text/x-not-multipart", script)]),
    ):
        assert _leaves(compose_user_data(hostname="web-1", fqdn=FQDN, user_data=given)) == want
    theirs = MIMEMultipart()
    theirs.attach(MIMEText("#cloud-config\nruncmd: [ls]\n", "cloud-config"))
    theirs.attach(MIMEText("#!/bin/sh\necho two\n", "x-shellscript"))
    got = _leaves(compose_user_data(hostname="web-1", fqdn=FQDN, user_data=theirs.as_bytes()))
    assert got == [
        ours,
        ("text/cloud-config", b"#cloud-config\nruncmd: [ls]\n"),
        ("text/x-shellscript", b"#!/bin/sh\necho two\n"),
    ]
    # the same input gives the same bytes (the seed is rebuilt at every start)
    assert compose_user_data(hostname="web-1", fqdn=FQDN, user_data=script) == \
        compose_user_data(hostname="web-1", fqdn=FQDN, user_data=script)


@pytest.mark.parametrize(
    "fqdn",
    ["web-2.default.cumulo.internal", "web-1", "web-1.", "web-1..x", "web-1.a b", "web-1.x\n"],
)
def test_seed_rejects_an_fqdn_not_of_its_hostname(tmp_path: Path, fqdn: str) -> None:
    with pytest.raises(ValueError, match="fqdn"):
        build_seed_iso(tmp_path / "s.iso", instance_id="i-1", hostname="web-1", fqdn=fqdn)
    assert not list(tmp_path.iterdir())
