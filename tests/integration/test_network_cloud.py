"""Issue 3 through the whole stack: keys, SSH (cumulo ssh and the public IP), FQDNs, project
isolation, security groups on running instances, bandwidth caps, down + up. Real VMs (TCG),
traffic only to loopback or inside the cloud's own namespace."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from cumulo.agent.net import names
from tests.integration.conftest import CUMULO, Cloud

pytestmark = pytest.mark.qemu

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]


def ssh(cloud: Cloud, name: str, *command: str, check: bool = True, root: bool = False
        ) -> subprocess.CompletedProcess[str]:
    user = ["--user", "root"] if root else []  # busybox ping needs a raw socket
    return cloud.cli("ssh", *user, name, "--", *command, check=check)


def wait_ssh(cloud: Cloud, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = ssh(cloud, name, "true", check=False)
        if last.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"no SSH to {name}: {last.stderr if last else ''}")


def tcp_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=2) as s:
            s.settimeout(3)
            return s.recv(64) != b""
    except OSError:
        return False


def host_netns(cloud: Cloud) -> str:
    return names.netns_name(cloud.state_dir / "hosts" / "local")


def test_ssh_dns_isolation_firewall_and_bandwidth(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    key = c.json("keypair", "create", "k1")
    assert Path(key["private_key_file"]).stat().st_mode & 0o777 == 0o600
    c.cli("project", "create", "other")
    c.json("--project", "other", "keypair", "create", "k2")
    c.json("instance", "create", "a", "--image", "tiny", "--type", "t1.nano", "--key", "k1",
           "--wait")
    c.json("instance", "create", "b", "--image", "tiny", "--type", "t1.nano", "--key", "k1",
           "--bandwidth", "8", "--wait")
    c.json("--project", "other", "instance", "create", "x", "--image", "tiny", "--type",
           "t1.nano", "--key", "k2", "--wait")
    a, b = c.json("instance", "show", "a"), c.json("instance", "show", "b")
    x = c.json("--project", "other", "instance", "show", "x")
    assert a["fqdn"] == "a.default.local-1a.cumulo.internal"
    assert a["private_ip"] and a["public_ip"].startswith("127.")
    assert c.json("image", "show", "tiny")["default_user"] == "cumulo"
    for name in ("a", "b"):
        wait_ssh(c, name)

    # cumulo ssh returns the remote exit status and runs as the image's default user
    r = ssh(c, "a", "sh", "-c", "'id -un; hostname; exit 7'", check=False)
    assert r.returncode == 7 and r.stdout.split() == ["cumulo", "a"]
    # plain ssh to the public (loopback) IP with the key
    r = subprocess.run(["ssh", *SSH_OPTS, "-i", key["private_key_file"],
                        f"cumulo@{a['public_ip']}", "hostname"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "a", r.stderr

    # one instance reaches another of its project by FQDN
    r = ssh(c, "a", "ping", "-c", "1", "-W", "3", b["fqdn"], check=False, root=True)
    assert r.returncode == 0 and b["private_ip"] in r.stdout, r.stdout + r.stderr

    # no packet between projects; no route to any VM network in the root namespace
    r = ssh(c, "a", "ping", "-c", "2", "-W", "2", x["private_ip"], check=False, root=True)
    assert r.returncode != 0 and "permission denied" not in r.stderr
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    for vm in (a, b, x):
        prefix = ".".join(vm["private_ip"].split(".")[:2]) + "."
        assert prefix not in routes

    # a port is closed by default and opens on the running instance after a rule
    ssh(c, "b", "sh", "-c", "'(while true; do echo hello | nc -l -p 8080; done) "
                             ">/dev/null 2>&1 &'")
    assert not tcp_open(b["public_ip"], 8080)
    r = ssh(c, "a", "sh", "-c", f"'echo | nc -w 2 {b['private_ip']} 8080'", check=False)
    assert "hello" not in r.stdout
    c.cli("security-group", "rule-add", "default", "--proto", "tcp", "--port", "8080")
    t0 = time.monotonic()
    while not tcp_open(b["public_ip"], 8080):
        assert time.monotonic() - t0 < 2.0, "the rule did not reach the running instance in 2 s"
        time.sleep(0.1)
    r = ssh(c, "a", "sh", "-c", f"'echo | nc -w 2 {b['private_ip']} 8080'", check=False)
    assert "hello" in r.stdout

    # the bandwidth cap is on b's tap, in both directions
    ns = host_netns(c)
    tap = names.tap_name(b["id"], 0)
    shown = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", tap], capture_output=True,
                           text=True).stdout + subprocess.run(
        ["tc", "-n", ns, "qdisc", "show", "dev", names.ifb_name(tap)], capture_output=True,
        text=True).stdout
    assert shown.count("8Mbit") >= 2, shown
    size = 2 * 1024 * 1024
    t0 = time.monotonic()
    upload = subprocess.run([*CUMULO, "ssh", "b", "--", "cat", ">/dev/null"],
                            input=b"\0" * size, capture_output=True, timeout=120, env=c.env)
    assert upload.returncode == 0
    assert time.monotonic() - t0 >= size * 8 / 8e6, "upload beat the 8 Mbit/s cap"


def test_delete_cleans_up_and_down_up_restores(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    c.json("keypair", "create", "k")
    c.json("instance", "create", "keep", "--image", "tiny", "--type", "t1.nano", "--key", "k",
           "--wait")
    gone = c.json("instance", "create", "gone", "--image", "tiny", "--type", "t1.nano",
                  "--key", "k", "--wait")
    wait_ssh(c, "keep")
    ns = host_netns(c)
    tap = names.tap_name(gone["id"], 0)
    c.cli("instance", "delete", "gone", "--wait")
    links = subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True).stdout
    assert tap not in links
    assert not tcp_open(gone["public_ip"], 22)
    assert gone["public_ip"] not in {p["ip"] for p in c.json("ip", "list")}

    c.stop()
    c.cli("down", "--state-dir", str(c.state_dir))
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout
    c.start()
    c.wait_state("keep", "running", timeout=60)
    wait_ssh(c, "keep")
    assert ssh(c, "keep", "hostname").stdout.strip() == "keep"
