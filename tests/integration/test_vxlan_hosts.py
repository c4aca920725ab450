"""Two hosts' data planes on a real underlay (no VMs): each makes its network's VXLAN device
with the forwarding entries the records call for, and when an instance changes host the
entries on the kernel follow at the next pass; a host that no longer serves the network
removes its device."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cumulo.agent.net import names, vxlan
from cumulo.agent.net.host_network import HostNetwork
from cumulo.allinone import fabric
from cumulo.protocol import Assignment, DnsRecord, NetworkRef
from tests.unit.agent.net.test_vxlan_plan import vm_on

NET_ID = "net-00000000000000f19"
MACS = {"a": "52:19:00:00:00:0a", "b": "52:19:00:00:00:0b", "c": "52:19:00:00:00:0c"}


def _vm(name: str) -> Assignment:
    return vm_on(NET_ID, name, MACS[name], f"10.219.0.{ord(name)}")


def _net(where: dict[str, str]) -> NetworkRef:
    return NetworkRef(
        id=NET_ID, vni=4321, project="p", cidr="10.219.0.0/24", gateway="10.219.0.1",
        dns_domain="p.z.cumulo.test",
        records=[DnsRecord(hostname=n, fqdn=f"{n}.p.z.cumulo.test", ip=f"10.219.0.{ord(n)}",
                           mac=MACS[n], underlay_ip=ip) for n, ip in sorted(where.items())],
    )  # fmt: skip


def _fdb(hn: HostNetwork) -> set[tuple[str, str]]:
    out = subprocess.run(["bridge", "-n", hn.netns, "-j", "fdb", "show"], capture_output=True,
                         text=True, check=True).stdout
    return vxlan.parse_fdb(out).get(names.vxlan_name(NET_ID), set())


def _vxlans(hn: HostNetwork) -> list[str]:
    out = subprocess.run(["ip", "-n", hn.netns, "-j", "link", "show", "type", "vxlan"],
                         capture_output=True, text=True, check=True).stdout
    return [i["ifname"] for i in json.loads(out or "[]")]


@pytest_asyncio.fixture
async def hosts() -> AsyncIterator[tuple[HostNetwork, HostNetwork, str, str]]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "bridge", "nft",
                                                               "dnsmasq")):
        pytest.skip("needs root, iproute2, nftables and dnsmasq")
    d = Path(tempfile.mkdtemp(prefix="cvx-", dir="/tmp"))
    ips = fabric.addresses("10.251.19.0/24", 2)
    ports = [fabric.Port(d / f"h{i}", ip) for i, ip in enumerate(ips)]
    h1, h2 = (HostNetwork(p.host_dir, str(p.address.ip)) for p in ports)
    try:
        await fabric.ensure(d, ports)
        yield h1, h2, str(ips[0].ip), str(ips[1].ip)
    finally:
        for hn in (h1, h2):
            await hn.teardown()
        await fabric.teardown(d)
        shutil.rmtree(d, ignore_errors=True)


async def test_forwarding_entries_follow_an_instance_that_changes_host(
        hosts: tuple[HostNetwork, HostNetwork, str, str]) -> None:
    h1, h2, ip1, ip2 = hosts
    assert ipaddress.IPv4Address(ip1) != ipaddress.IPv4Address(ip2)
    # a on host 1; b and c on host 2.
    where = {"a": ip1, "b": ip2, "c": ip2}
    await h1.converge([_net(where)], [_vm("a")], set())
    await h2.converge([_net(where)], [_vm("b"), _vm("c")], set())
    flood = vxlan.FLOOD
    assert _fdb(h1) == {(MACS["b"], ip2), (MACS["c"], ip2), (flood, ip2)}
    assert _fdb(h2) == {(MACS["a"], ip1), (flood, ip1)}

    # c moves to host 1: both hosts' entries follow at their next pass.
    where["c"] = ip1
    await h1.converge([_net(where)], [_vm("a"), _vm("c")], set())
    await h2.converge([_net(where)], [_vm("b")], set())
    assert _fdb(h1) == {(MACS["b"], ip2), (flood, ip2)}
    assert _fdb(h2) == {(MACS["a"], ip1), (MACS["c"], ip1), (flood, ip1)}

    # b leaves host 2 for host 1: host 2 serves the network no more and removes its device;
    # host 1 has no one to flood to.
    where["b"] = ip1
    await h2.converge([], [], set())
    await h1.converge([_net(where)], [_vm("a"), _vm("b"), _vm("c")], set())
    assert _vxlans(h2) == [] and _fdb(h1) == set()
    assert _vxlans(h1) == [names.vxlan_name(NET_ID)]
