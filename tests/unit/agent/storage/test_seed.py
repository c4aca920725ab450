"""The NoCloud seed ISO, read back with pycdlib (the real library, no mocks)."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest

from cumulo.agent.storage.seed import build_seed_iso, render_meta_data


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
