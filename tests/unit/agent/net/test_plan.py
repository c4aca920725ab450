"""The data plane's desired state: validation, names, forwards (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.agent.net import bridge, names, plan
from cumulo.agent.net.cmd import NetError
from cumulo.protocol import (
    Assignment,
    DnsRecord,
    FirewallRule,
    ImageFile,
    ImageRef,
    NetworkRef,
    NicRef,
    PortAssignment,
)

NET = NetworkRef(
    id="net-0000000000000000a", project="p1", cidr="10.9.1.0/24", gateway="10.9.1.1",
    dns_domain="p1.z.cumulo.test",
    records=[DnsRecord(hostname="web", fqdn="web.p1.z.cumulo.test", ip="10.9.1.10",
                       mac="52:54:00:00:00:0A")],
)  # fmt: skip


def vm(vm_id: str = "i-0000000000000000a", **kw: object) -> Assignment:
    base: dict[str, object] = dict(
        id=vm_id, hostname="web", project="p1", arch="x86_64", vcpus=1, ram_mib=128,
        disk_gib=1, state="running", desired_power="running", generation=1, reboot_seq=0,
        reboot_done_seq=0,
        image=ImageRef(id="img-0123456789abcdef0", boot="bios",
                       disk=ImageFile(sha256="0" * 64, size=0)),
        nics=[NicRef(network_id=NET.id, mac="52:54:00:00:00:0a", ip="10.9.1.10")],
        ingress=[FirewallRule(proto="tcp", port=22)],
    )  # fmt: skip
    base.update(kw)
    return Assignment(**base)  # type: ignore[arg-type]


def test_names_fit_in_ifnamsiz_and_are_stable() -> None:
    ns = names.netns_name(Path("/var/lib/cumulo/hosts/local"))
    assert ns == names.netns_name(Path("/var/lib/cumulo/hosts/local"))
    assert ns != names.netns_name(Path("/var/lib/cumulo/hosts/other"))
    tap = names.tap_name("i-0123456789abcdef0", 99)
    for n in (ns, names.bridge_name("net-0123456789abcdef0"), tap, names.ifb_name(tap)):
        assert len(n.encode()) <= names.IFNAMSIZ
    assert names.tap_name("i-1", 0) != names.tap_name("i-1", 1)
    assert names.ifb_name(tap).startswith("cf") and names.ifb_name(tap)[2:] == tap[2:]
    with pytest.raises(ValueError):
        names.tap_name("i-1", 100)


def test_plan_keeps_only_running_nics_and_normalises() -> None:
    p = plan.build([NET], [vm(), vm("i-0000000000000000b", nics=[])], {"i-0000000000000000a"})
    (net,) = p.nets
    assert (net.gateway, net.prefixlen, net.netmask, net.network_addr) == (
        "10.9.1.1", 24, "255.255.255.0", "10.9.1.0")  # fmt: skip
    assert net.hosts == (plan.Host("web", "web.p1.z.cumulo.test", "10.9.1.10",
                                   "52:54:00:00:00:0a"),)  # fmt: skip
    (nic,) = p.nics
    assert nic.tap == names.tap_name("i-0000000000000000a", 0) and nic.bridge == net.bridge
    assert nic.rules == (plan.Rule("tcp", 22, "0.0.0.0/0"),)
    assert plan.build([NET], [vm()], set()).nics == ()


@pytest.mark.parametrize(
    "bad",
    [
        {"ingress": [FirewallRule(proto="gre")]},
        {"ingress": [FirewallRule(proto="tcp", port=70000)]},
        {"ingress": [FirewallRule(proto="tcp", port=22, cidr="10.0.0.0/8; drop")]},
        {"nics": [NicRef(network_id=NET.id, mac="52:54:00:00:00:0a", ip="10.9.2.10")]},
        {"nics": [NicRef(network_id=NET.id, mac="nope", ip="10.9.1.10")]},
        {"nics": [NicRef(network_id="net-other", mac="52:54:00:00:00:0a", ip="10.9.1.10")]},
    ],
)
def test_malformed_input_is_rejected_never_interpolated(bad: dict[str, object]) -> None:
    with pytest.raises(NetError):
        plan.build([NET], [vm("i-0000000000000000a", **bad)], {"i-0000000000000000a"})


def test_bad_network_is_rejected() -> None:
    with pytest.raises(NetError, match="outside"):
        plan.network(NET.model_copy(update={"gateway": "10.9.2.1"}))
    with pytest.raises(NetError, match="dns domain"):
        plan.network(NET.model_copy(update={"dns_domain": "bad domain/"}))


def test_a_bare_metal_port_is_plugged_like_a_running_vms_nic_and_unplugged_once_gone() -> None:
    """A port without a VM: its tap (named after its MAC) on the network's bridge, behind its
    rules, answered by DHCP; a port tap left on a bridge with no port assigned is unplugged
    (a VM's tap never is: it goes with its QEMU)."""
    mac = "02:aa:bb:cc:dd:01"
    net = NET.model_copy(update={"records": [
        DnsRecord(hostname="metal", fqdn="metal.p1.z.cumulo.test", ip="10.9.1.20", mac=mac)]})
    port = PortAssignment(id="i-0000000000000000c",
                          nics=[NicRef(network_id=NET.id, mac=mac.upper(), ip="10.9.1.20")],
                          ingress=[FirewallRule(proto="icmp")])
    p = plan.build([net], [], set(), ports=[port])
    (nic,) = p.nics
    assert (nic.tap, nic.bridge, nic.mac, nic.ip, nic.mbps) == (
        "cp02aabbccdd01", p.nets[0].bridge, mac, "10.9.1.20", 0)
    assert nic.rules == (plan.Rule("icmp", None, "0.0.0.0/0"),)
    assert [h.mac for h in p.nets[0].dhcp_hosts] == [mac]
    vm_tap = names.tap_name("i-0000000000000000a", 0)
    present = {t: bridge.Link(t, "tun", p.nets[0].bridge) for t in (nic.tap, vm_tap)}
    assert bridge.unplug_lines(present, p.nics) == []
    assert bridge.unplug_lines(present, ()) == [f"link set {nic.tap} nomaster"]
    with pytest.raises(NetError):  # its MAC names its tap: checked before any use
        plan.build([net], [], set(), ports=[port.model_copy(update={"nics": [
            NicRef(network_id=NET.id, mac="02:aa;rm", ip="10.9.1.20")]})])
