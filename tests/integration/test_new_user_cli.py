"""What a new user met through the CLI (issue #17): errors that named another project's
network, a public IP taken from an instance without a word, instances too small to boot,
addresses handed out again after a restart, and a `ready` said before the host was."""

from __future__ import annotations

import time

from cumulo.domain.netaddr import address_int
from tests.integration.conftest import Cloud


def _fails(c: Cloud, code: str, *args: str) -> str:
    """The command fails with one line `error[code]: ...`; returns that line."""
    r = c.cli(*args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, (args, r.stdout, r.stderr)
    assert lines[0].startswith(f"error[{code}]: "), (args, r.stderr)
    return lines[0]


def test_errors_name_only_the_callers_own_networks(fake_cloud: Cloud) -> None:
    c = fake_cloud
    c.cli("project", "create", "b")
    c.cli("network", "create", "secretnet", "--cidr", "10.88.0.0/24")
    line = _fails(c, "cidr_overlap", "--project", "b", "network", "create", "x",
                  "--cidr", "10.88.0.0/16")
    assert "secretnet" not in line and "10.88.0.0/24" not in line, line
    # The caller's own network is named: it is theirs to know.
    line = _fails(c, "cidr_overlap", "network", "create", "y", "--cidr", "10.88.0.0/25")
    assert "'secretnet' (10.88.0.0/24)" in line, line
    assert [n["name"] for n in c.json("--project", "b", "network", "list")] == []


def test_ip_attach_never_takes_an_address_silently(fake_cloud: Cloud) -> None:
    c = fake_cloud
    for name in ("web-1", "arm-1"):
        c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano")
    ip = c.json("ip", "allocate")["ip"]
    # Replacing the address an instance got at create is what attach is for.
    assert c.json("ip", "attach", ip, "arm-1")["instance"] == "arm-1"
    web_ip = c.json("instance", "show", "web-1")["public_ip"]
    line = _fails(c, "ip_in_use", "ip", "attach", ip, "web-1")
    assert "arm-1" in line and "--reassociate" in line
    assert c.json("instance", "show", "arm-1")["public_ip"] == ip  # nothing changed
    assert c.json("instance", "show", "web-1")["public_ip"] == web_ip
    spare = c.json("ip", "allocate")["ip"]
    _fails(c, "ip_in_use", "ip", "attach", spare, "arm-1")  # it holds an allocated one
    assert c.json("instance", "show", "arm-1")["public_ip"] == ip
    moved = c.json("ip", "attach", ip, "web-1", "--reassociate")
    assert moved["instance"] == "web-1"
    assert c.json("instance", "show", "arm-1")["public_ip"] is None
    assert c.json("instance", "show", "web-1")["public_ip"] == ip


def test_instances_below_their_images_minimum_ram_are_refused(fake_cloud: Cloud) -> None:
    c = fake_cloud
    variants = {v["arch"]: v for v in c.json("image", "show", "tiny")["variants"]}
    assert variants["x86_64"]["min_ram_mib"] == 96 and variants["arm64"]["min_ram_mib"] == 64
    for arch, ram in (("x86_64", "1"), ("x86_64", "64"), ("arm64", "16")):
        line = _fails(c, "invalid_size", "instance", "create", "small", "--image", "tiny",
                      "--arch", arch, "--vcpus", "1", "--ram", ram)
        assert f"{ram} MiB of RAM is too little for image 'tiny' ({arch})" in line
    assert c.json("instance", "list") == []
    assert c.json("ip", "list") == []  # no address was held for them
    vm = c.json("instance", "create", "small", "--image", "tiny", "--arch", "arm64",
                "--vcpus", "1", "--ram", "64", "--wait")
    assert vm["state"] == "running"


def test_after_a_restart_freed_addresses_wait_and_ready_means_ready(fake_cloud: Cloud) -> None:
    c = fake_cloud
    a = c.json("instance", "create", "a", "--image", "tiny", "--type", "t1.nano", "--wait")
    b = c.json("instance", "create", "b", "--image", "tiny", "--type", "t1.nano", "--wait")
    first, second = c.json("ip", "allocate")["ip"], c.json("ip", "allocate")["ip"]
    c.cli("instance", "delete", "a", "--wait")
    c.cli("ip", "release", first)

    c.stop()
    offset = c.log.stat().st_size
    c.spawn()
    deadline = time.monotonic() + 120
    while "cumulo: ready:" not in (said := c.log.read_text()[offset:]):
        assert time.monotonic() < deadline, said
        assert c.proc is not None and c.proc.poll() is None, said
        time.sleep(0.05)
    assert "host local is up in zone local-1a" in said
    # At once: a script that waits for `ready` and creates must not fail.
    vm = c.json("instance", "create", "c", "--image", "tiny", "--type", "t1.nano")
    assert vm["state"] == "pending"
    third = c.json("ip", "allocate")["ip"]

    # Freed addresses come back only after the rest of their range, across the restart too.
    assert address_int(vm["private_ip"]) == address_int(b["private_ip"]) + 1, (a, b, vm)
    assert vm["public_ip"] not in (a["public_ip"], first)
    assert address_int(vm["public_ip"]) > address_int(second)
    assert address_int(third) == address_int(vm["public_ip"]) + 1
