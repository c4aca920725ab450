"""Issue 17 (10, 13) through the whole stack, in real tiny guests: the FQDN from the seed
(`hostname -f`, /etc/hosts) next to the user's own user-data (a script still runs, a
cloud-config still applies), `ping` for the default user, and its sudo as the seed says."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Cloud
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu

NO_SUDO = "#cloud-config\nusers:\n  - default\n  - name: cumulo\n    sudo: false\n"


def test_fqdn_ping_and_sudo_for_the_default_user(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    c.json("keypair", "create", "k1")
    script = c.state_dir / "user-data.sh"
    script.write_text("#!/bin/sh\nhostname -f > /run/user-data-saw\n")
    no_sudo = c.state_dir / "no-sudo.yaml"
    no_sudo.write_text(NO_SUDO)
    for name, user_data in (("a", script), ("b", no_sudo)):
        c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano", "--key", "k1",
               "--user-data", str(user_data), "--wait")
    a, b = c.json("instance", "show", "a"), c.json("instance", "show", "b")
    gateway = next(n["gateway"] for n in c.json("network", "list") if n["is_default"])
    for name in ("a", "b"):
        wait_ssh(c, name)

    # the FQDN: hostname -f, /etc/hosts; the short name stays the hostname
    for inst in (a, b):
        assert ssh(c, inst["name"], "hostname").stdout.strip() == inst["name"]
        assert ssh(c, inst["name"], "hostname", "-f").stdout.strip() == inst["fqdn"]
    hosts = ssh(c, "a", "cat", "/etc/hosts").stdout
    assert f"127.0.1.1\t{a['fqdn']} a\n" in hosts
    # the user's script ran too (after the hostname was set)
    assert ssh(c, "a", "cat", "/run/user-data-saw").stdout.strip() == a["fqdn"]

    # ping as the default user (no root): the gateway and the other instance
    assert ssh(c, "a", "id", "-u").stdout.strip() == "1000"
    for target in (gateway, b["private_ip"], b["fqdn"]):
        r = ssh(c, "a", "ping", "-c", "1", "-W", "5", target, check=False)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr

    # sudo: passwordless by default, refused where the seed says `sudo: false`
    r = ssh(c, "a", "sudo", "-n", "id", "-u", check=False)
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stdout + r.stderr
    r = ssh(c, "b", "sudo", "-n", "id", "-u", check=False)
    assert r.returncode != 0 and r.stdout.strip() != "0", r.stdout + r.stderr
    assert "sudo for cumulo: none" in c.cli("instance", "console-log", "b").stdout
