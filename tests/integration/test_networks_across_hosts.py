"""Issue 19, item 1, with `cumulo up --hosts 3` and real VMs (TCG): one project's network
spans two hosts over a VXLAN segment (ping by IP and by FQDN, a 50 MiB TCP transfer with the
MTU DHCP gave, the anycast gateway, security groups and caps on each host), another
project's instance reaches neither of them, in either direction, even on-link; `cumulo down`
leaves no VXLAN device."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cumulo.agent.net import names, vxlan
from cumulo.allinone.fabric import fabric_netns
from tests.integration.conftest import Cloud
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu

HOSTS = ("local", "local-2", "local-3")
SIZE_MIB = 50
NIC = "/sys/class/net/e*"  # the guest's one NIC (eth0)


def _segments(c: Cloud, host: str) -> dict[str, int]:
    """VXLAN device -> VNI in a host's namespace."""
    ns = names.netns_name(c.state_dir / "hosts" / host)
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", "type", "vxlan"],
                         capture_output=True, text=True, check=True).stdout
    return {i["ifname"]: i["linkinfo"]["info_data"]["id"] for i in json.loads(out or "[]")}


def _ping(c: Cloud, name: str, target: str, project: str = "default"
          ) -> subprocess.CompletedProcess[str]:
    r = c.cli("--project", project, "ssh", "--user", "root", name, "--", "ping", "-c", "2",
              "-W", "3", target, check=False)
    assert "permission denied" not in r.stderr.lower(), r.stderr
    return r


def _none_answer(c: Cloud, pings: list[tuple[str, str, str]]) -> None:
    """Each (source, its project, target IP) ping fails. They run at once: each waits out its
    own `-W 3` for nothing, and one after another that was most of a minute."""
    with ThreadPoolExecutor(len(pings)) as pool:
        done = list(pool.map(lambda p: (p, _ping(c, p[0], p[2], p[1])), pings))
    for ping, r in done:
        assert r.returncode != 0, (ping, r.stdout)


def _create(c: Cloud, name: str, key: str, project: str = "default") -> dict[str, Any]:
    vm: dict[str, Any] = c.json("--project", project, "instance", "create", name, "--image",
                                "tiny", "--type", "t1.nano", "--zone", "local-1a", "--key",
                                key, "--wait")
    return vm


def _wait_ssh_other(c: Cloud, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while c.cli("--project", "other", "ssh", name, "--", "true", check=False).returncode:
        assert time.monotonic() < deadline, f"no SSH to {name}"
        time.sleep(1)


def test_a_network_spans_hosts_and_projects_stay_apart(qemu_cloud_3: Cloud) -> None:
    c = qemu_cloud_3
    c.json("keypair", "create", "k")
    c.cli("project", "create", "other")
    c.json("--project", "other", "keypair", "create", "k2")
    # local-1a has two hosts and the scheduler spreads: a and b land on different hosts.
    a, b = _create(c, "a", "k"), _create(c, "b", "k")
    x = _create(c, "x", "k2", "other")
    assert {a["host"], b["host"]} == {"local", "local-3"}, (a["host"], b["host"])
    for name in ("a", "b"):
        wait_ssh(c, name, timeout=300)
    (net,) = c.json("network", "list")
    (xnet,) = c.json("--project", "other", "network", "list")

    # One segment per network: a's and b's hosts share one VNI, x's network has its own.
    seg = names.vxlan_name(net["id"])
    vni = _segments(c, a["host"])[seg]
    assert _segments(c, b["host"])[seg] == vni
    assert _segments(c, x["host"])[names.vxlan_name(xnet["id"])] != vni
    assert seg not in _segments(c, "local-2")  # serves neither network

    # The guests got the MTU that fits the VXLAN overhead.
    for name in ("a", "b"):
        mtu = ssh(c, name, "sh", "-c", f"'cat {NIC}/mtu'").stdout.strip()
        assert mtu == str(vxlan.MTU) == "1450", (name, mtu)

    # By IP and by FQDN, both ways, across hosts.
    r = _ping(c, "a", b["private_ip"])
    assert r.returncode == 0, r.stdout + r.stderr
    for src, dst in (("a", b), ("b", a)):
        r = _ping(c, src, dst["fqdn"])
        assert r.returncode == 0 and dst["private_ip"] in r.stdout, r.stdout + r.stderr
    # The gateway is anycast: the same MAC on both hosts, answered by each host locally.
    for name in ("a", "b"):
        arp = ssh(c, name, "cat", "/proc/net/arp").stdout
        assert f"{net['gateway']} " in arp and names.gateway_mac(net["id"]) in arp, arp

    # Each host caps its own instances (t1.nano: 100 Mbit/s), both directions.
    for vm in (a, b):
        ns = names.netns_name(c.state_dir / "hosts" / vm["host"])
        tap = names.tap_name(vm["id"], 0)
        shown = "".join(subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev],
                                       capture_output=True, text=True).stdout
                        for dev in (tap, names.ifb_name(tap)))
        assert shown.count("100Mbit") >= 2, shown

    # 50 MiB of TCP from a to b (the tiny guests' busybox nc), checked on arrival. The
    # listener's stdin never ends: busybox nc half-closes the connection at the end of its
    # stdin, and the sender stops at the end of the connection's other half.
    ssh(c, "b", "sh", "-c",
        "'(sleep 600 | nc -l -p 5001 | md5sum > /tmp/rx) >/dev/null 2>&1 &'")
    # b's security groups hold on b's host: the port is closed until a rule opens it.
    r = ssh(c, "a", "sh", "-c", f"'echo x | nc -w 3 {b['private_ip']} 5001'", check=False)
    assert r.returncode != 0, r.stdout + r.stderr
    c.cli("security-group", "rule-add", "default", "--proto", "tcp", "--port", "5001")
    time.sleep(2)
    sent = ssh(c, "a", "sh", "-c", f"'dd if=/dev/zero bs=1048576 count={SIZE_MIB} 2>/dev/null"
                                   f" | nc {b['private_ip']} 5001; echo sent'", check=False)
    assert "sent" in sent.stdout, sent.stdout + sent.stderr
    want = hashlib.md5(b"\0" * SIZE_MIB * 2**20).hexdigest()
    deadline, got = time.monotonic() + 60, ""
    while time.monotonic() < deadline and want not in got:
        got = ssh(c, "b", "cat", "/tmp/rx", check=False).stdout
        time.sleep(1)
    assert want in got, got

    # Another project's instance reaches neither, in either direction: not routed, and not
    # on-link either (an on-link route makes each side ARP on its own segment: had the
    # segments been joined, those ARPs would be answered).
    _wait_ssh_other(c, "x")
    across = [("a", "default", x["private_ip"]), ("b", "default", x["private_ip"]),
              ("x", "other", a["private_ip"]), ("x", "other", b["private_ip"])]
    _none_answer(c, across)
    c.cli("--project", "other", "ssh", "--user", "root", "x", "--", "ip", "route", "add",
          net["cidr"], "dev", "eth0")
    for name in ("a", "b"):
        ssh(c, name, "ip", "route", "add", xnet["cidr"], "dev", "eth0", root=True)
    _none_answer(c, across)
    # ... while within the project, the same on-link path works.
    assert _ping(c, "b", a["private_ip"]).returncode == 0

    namespaces = {fabric_netns(c.state_dir)} | {names.netns_name(c.state_dir / "hosts" / h)
                                                for h in HOSTS}
    c.stop()
    c.cli("down", "--state-dir", str(c.state_dir))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in namespaces if n in listed]
    root = subprocess.run(["ip", "-d", "-j", "link", "show", "type", "vxlan"],
                          capture_output=True, text=True, check=True).stdout
    assert not [i for i in json.loads(root or "[]") if names.is_cumulo_vxlan(i["ifname"])]
