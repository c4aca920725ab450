"""Networks across hosts, planned (pure): which VXLAN forwarding entries each host wants from
the records, the commands that get there from what the kernel holds, DHCP only for the
host's own instances, the anycast gateway and its firewall rules at the VXLAN port."""

from __future__ import annotations

import json

import pytest

from cumulo.agent.net import firewall, names, plan, vxlan
from cumulo.agent.net.cmd import NetError
from cumulo.protocol import Assignment, DnsRecord, ImageRef, NetworkRef, NicRef

H1, H2, H3 = "10.250.0.1", "10.250.0.2", "10.250.0.3"
NET_ID = "net-0000000000000000a"
MAC = {n: f"52:00:00:00:00:0{i}" for i, n in enumerate(("a", "b", "c", "d"), start=1)}
WHERE = {"a": H1, "b": H2, "c": H2, "d": H3}  # a runs on host 1; b and c on 2; d on 3


def net(vni: int = 4242, where: dict[str, str] = WHERE) -> NetworkRef:
    return NetworkRef(
        id=NET_ID, vni=vni, project="p1", cidr="10.9.1.0/24", gateway="10.9.1.1",
        dns_domain="p1.z.cumulo.test",
        records=[DnsRecord(hostname=n, fqdn=f"{n}.p1.z.cumulo.test", ip=f"10.9.1.1{i}",
                           mac=MAC[n].upper(), underlay_ip=where[n])
                 for i, n in enumerate(sorted(where))],
    )  # fmt: skip


def vm_on(network_id: str, name: str, mac: str, ip: str) -> Assignment:
    """An instance named `name` (a letter) with one NIC on the network."""
    return Assignment(
        id=f"i-00000000000000{ord(name):03x}", hostname=name, project="p1", arch="x86_64",
        vcpus=1, ram_mib=128, disk_gib=1, state="running", desired_power="running",
        generation=1, reboot_seq=0, reboot_done_seq=0,
        image=ImageRef(id="i", boot="kernel", disk_path="/d", kernel_path=None,
                       initrd_path=None, kernel_cmdline=""),
        nics=[NicRef(network_id=network_id, mac=mac, ip=ip)],
    )  # fmt: skip


def vm(name: str) -> Assignment:
    return vm_on(NET_ID, name, MAC[name], "10.9.1.10")


def host_plan(local_ip: str | None, *names_: str, network: NetworkRef | None = None
              ) -> plan.Net:
    (n,) = plan.build([network or net()], [vm(x) for x in names_], set(), local_ip).nets
    return n


def test_each_host_sends_remote_macs_to_their_host_and_floods_to_the_others() -> None:
    seg = host_plan(H1, "a").segment
    assert seg is not None
    assert (seg.device, seg.bridge, seg.vni, seg.local_ip) == (
        names.vxlan_name(NET_ID), names.bridge_name(NET_ID), 4242, H1)
    assert seg.macs == ((MAC["b"], H2), (MAC["c"], H2), (MAC["d"], H3))
    assert seg.peers == (H2, H3)
    assert seg.entries() == {(MAC["b"], H2), (MAC["c"], H2), (MAC["d"], H3),
                             (vxlan.FLOOD, H2), (vxlan.FLOOD, H3)}
    # Host 2 runs b and c: they are local to it, never sent over the segment.
    seg2 = host_plan(H2, "b", "c").segment
    assert seg2 is not None
    assert seg2.macs == ((MAC["a"], H1), (MAC["d"], H3)) and seg2.peers == (H1, H3)


def test_a_record_pointing_at_this_host_or_at_no_host_gets_no_entry() -> None:
    # d's record says host 1, but host 1 does not run it (yet): never a tunnel to itself.
    # a's host has no underlay address: nothing can reach it.
    seg = host_plan(H1, "b", network=net(where={"a": "", "b": H1, "d": H1, "c": H2})).segment
    assert seg is not None
    assert seg.macs == ((MAC["c"], H2),) and seg.peers == (H2,)


def test_no_segment_without_an_underlay_or_a_vni() -> None:
    for n in (host_plan(None, "a"), host_plan(H1, "a", network=net(vni=0))):
        assert n.segment is None and n.mtu is None
        assert n.dhcp_hosts == n.hosts  # a network on one host answers every lease
    with pytest.raises(NetError):
        host_plan(H1, "a", network=net(vni=2**24))
    with pytest.raises(NetError):
        host_plan(H1, "a", network=net(where={**WHERE, "b": "224.0.0.1"}))


def test_dhcp_answers_only_local_instances_dns_all_and_the_gateway_is_the_same_everywhere(
) -> None:
    n1, n2 = host_plan(H1, "a"), host_plan(H2, "b", "c")
    assert [h.hostname for h in n1.dhcp_hosts] == ["a"]
    assert [h.hostname for h in n2.dhcp_hosts] == ["b", "c"]
    assert n1.hosts == n2.hosts and len(n1.hosts) == 4
    assert n1.mtu == n2.mtu == vxlan.MTU == 1450
    assert n1.gateway_mac == n2.gateway_mac == names.gateway_mac(NET_ID)
    assert n1.gateway_mac.startswith("02:") and len(n1.gateway_mac) == 17
    assert names.gateway_mac("net-0000000000000000b") != n1.gateway_mac


def test_fdb_lines_turn_what_the_kernel_holds_into_the_plan() -> None:
    dev = "cv000000000000"
    have = {(MAC["b"], H2), (MAC["c"], H3), (vxlan.FLOOD, H2), (vxlan.FLOOD, H3),
            (MAC["d"], H3)}
    # c moved from host 3 to host 2; d left; host 3 serves the network no more.
    want = {(MAC["b"], H2), (MAC["c"], H2), (vxlan.FLOOD, H2)}
    assert vxlan.fdb_lines(dev, want, have) == [
        f"fdb del {vxlan.FLOOD} dev {dev} dst {H3} self",
        f"fdb del {MAC['c']} dev {dev} dst {H3} self",
        f"fdb del {MAC['d']} dev {dev} dst {H3} self",
        f"fdb replace {MAC['c']} dev {dev} dst {H2} self permanent",
    ]
    assert vxlan.fdb_lines(dev, want, want) == []
    assert vxlan.fdb_lines(dev, {(vxlan.FLOOD, H1), (vxlan.FLOOD, H2)}, set()) == [
        f"fdb append {vxlan.FLOOD} dev {dev} dst {H1} self permanent",
        f"fdb append {vxlan.FLOOD} dev {dev} dst {H2} self permanent",
    ]


def test_parse_fdb_keeps_the_remote_entries_of_vxlan_devices_only() -> None:
    shown = json.dumps([
        {"mac": "ae:c8:08:fa:54:f4", "ifname": "cvx", "flags": [], "master": "cbx",
         "state": "permanent"},
        {"mac": "52:00:00:00:00:02", "ifname": "cvx", "dst": H2, "flags": ["self"],
         "state": "permanent"},
        {"mac": vxlan.FLOOD, "ifname": "cvx", "dst": H3, "flags": ["self"],
         "state": "permanent"},
        {"mac": "33:33:00:00:00:01", "ifname": "ct1", "flags": ["self"], "state": "permanent"},
    ])  # fmt: skip
    assert vxlan.parse_fdb(shown) == {"cvx": {(MAC["b"], H2), (vxlan.FLOOD, H3)}}
    assert vxlan.parse_fdb("") == {}


def test_device_lines_make_the_device_again_when_its_vni_or_source_changed() -> None:
    seg = host_plan(H1, "a").segment
    assert seg is not None
    add = (f"link add {seg.device} type vxlan id 4242 local {H1} dstport 4789 nolearning")
    up = f"link set {seg.device} master {seg.bridge} mtu 1450 up"
    assert vxlan.device_lines(seg, {}) == [add, up]
    assert vxlan.device_lines(seg, {seg.device: (4242, H1)}) == [up]
    assert vxlan.device_lines(seg, {seg.device: (4242, H2)}) == [
        f"link del {seg.device}", add, up]


def test_the_gateway_and_dhcp_never_cross_the_vxlan_port() -> None:
    n = host_plan(H1, "a")
    assert n.segment is not None
    script = firewall.render((n,), ())
    dev, mac = n.segment.device, n.gateway_mac
    for side in ("iifname", "oifname"):
        for rule in (f"ether saddr {mac} drop", f"arp daddr ip {n.gateway} drop",
                     f"arp saddr ip {n.gateway} drop", f"ip daddr {n.gateway} drop",
                     f"ip saddr {n.gateway} drop", "udp dport { 67, 68 } drop"):
            assert f'\t\t{side} "{dev}" {rule}\n' in script, (side, rule)
    assert "hook prerouting" in script and "hook postrouting" in script
    # One host alone: no segment, no such chains.
    assert "segments_in" not in firewall.render((host_plan(None, "a"),), ())
