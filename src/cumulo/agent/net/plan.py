"""What the host's data plane must look like (pure): assignments in, a NetPlan out.

Inputs are validated here (addresses, CIDRs, MACs, ports) because they end up in nft rulesets,
dnsmasq files and command lines: a malformed value is rejected, never interpolated.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cumulo.agent.net import names, vxlan
from cumulo.agent.net.cmd import NetError
from cumulo.protocol import Assignment, FirewallRule, NetworkRef, NicRef, PortAssignment

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
PROTOS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class Rule:
    proto: str  # tcp | udp | icmp
    port: int | None
    cidr: str  # normalised; "0.0.0.0/0" = anywhere


@dataclass(frozen=True)
class Host:
    hostname: str
    fqdn: str
    ip: str
    mac: str


@dataclass(frozen=True)
class Net:
    id: str
    bridge: str
    cidr: str
    gateway: str
    prefixlen: int
    netmask: str
    network_addr: str
    domain: str
    hosts: tuple[Host, ...]  # every instance on the network, wherever it runs (DNS)
    # Those this host answers DHCP for: its own. With one segment spanning hosts, each
    # host's dnsmasq answers only its instances (and ignores other MACs).
    dhcp_hosts: tuple[Host, ...] = ()
    gateway_mac: str = ""  # the bridge's MAC, the same on every host (names.gateway_mac)
    segment: vxlan.Segment | None = None  # None: the network stays on this host
    mtu: int | None = None  # given to guests by DHCP (option 26); None: the default (1500)


@dataclass(frozen=True)
class Nic:
    vm_id: str
    tap: str
    bridge: str
    ip: str
    mac: str
    mbps: int
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class NetPlan:
    nets: tuple[Net, ...]
    nics: tuple[Nic, ...]  # only NICs of running instances (their taps exist)
    edge_ip: str | None = None  # the edge's underlay address: let in to what the rules allow


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise NetError(f"invalid {what} {value!r}") from None


def _cidr(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise NetError(f"invalid {what} {value!r}") from None


def _mac(value: str) -> str:
    mac = value.lower()
    if not _MAC.match(mac):
        raise NetError(f"invalid MAC address {value!r}")
    return mac


def _name(value: str, what: str) -> str:
    v = value.lower().rstrip(".")
    if not v or len(v) > 253 or not all(_LABEL.match(p) for p in v.split(".")):
        raise NetError(f"invalid {what} {value!r}")
    return v


def rule(r: FirewallRule) -> Rule:
    if r.proto not in PROTOS:
        raise NetError(f"invalid protocol {r.proto!r} (expected one of {', '.join(PROTOS)})")
    port = None if r.proto == "icmp" else r.port
    if port is not None and not 1 <= port <= 65535:
        raise NetError(f"invalid port {port}")
    return Rule(r.proto, port, str(_cidr(r.cidr, "rule CIDR")))


def network(n: NetworkRef, local_macs: frozenset[str] = frozenset(),
            underlay_ip: str | None = None) -> Net:
    """A network as this host serves it: `local_macs` are the NICs of its own instances,
    `underlay_ip` its underlay address (None: no VXLAN segment, every record is local)."""
    cidr = _cidr(n.cidr, "network CIDR")
    gw = _ip(n.gateway, "gateway")
    if ipaddress.IPv4Address(gw) not in cidr:
        raise NetError(f"gateway {gw} is outside {cidr}")
    hosts = tuple(
        sorted(
            {
                Host(_name(r.hostname, "hostname"), _name(r.fqdn, "fqdn"), _ip(r.ip, "ip"),
                     _mac(r.mac))
                for r in n.records
            },
            key=lambda h: (ipaddress.IPv4Address(h.ip), h.fqdn),
        )
    )  # fmt: skip
    bridge = names.bridge_name(n.id)
    where = {_mac(r.mac): r.underlay_ip for r in n.records}
    seg = vxlan.segment(n.id, bridge, n.vni, underlay_ip,
                        ((m, ip) for m, ip in where.items() if m not in local_macs))
    return Net(
        id=n.id,
        bridge=bridge,
        cidr=str(cidr),
        gateway=gw,
        prefixlen=cidr.prefixlen,
        netmask=str(cidr.netmask),
        network_addr=str(cidr.network_address),
        domain=_name(n.dns_domain, "dns domain"),
        hosts=hosts,
        dhcp_hosts=hosts if seg is None else tuple(h for h in hosts if h.mac in local_macs),
        gateway_mac=names.gateway_mac(n.id),
        segment=seg,
        mtu=None if seg is None else vxlan.MTU,
    )


def _nic(owner: str, tap: str, ref: NicRef, by_id: dict[str, Net], mbps: int,
         rules: tuple[Rule, ...]) -> Nic:
    net = by_id.get(ref.network_id)
    if net is None:
        raise NetError(f"{owner}: network {ref.network_id} is not in the assignments")
    ip = _ip(ref.ip, "ip")
    if ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(net.cidr):
        raise NetError(f"{owner}: {ip} is outside {net.cidr}")
    return Nic(owner, tap, net.bridge, ip, _mac(ref.mac), mbps, rules)


def build(networks: list[NetworkRef], instances: list[Assignment], running: set[str],
          underlay_ip: str | None = None, edge_ip: str | None = None,
          ports: Sequence[PortAssignment] = ()) -> NetPlan:
    """`ports`: bare-metal NICs cabled to this host, plugged like running VMs' NICs (their
    tap is named after their MAC; it exists while the server runs from its disk)."""
    local = frozenset(_mac(nic.mac) for nics in [*(a.nics for a in instances),
                                                 *(p.nics for p in ports)] for nic in nics)
    nets = tuple(sorted((network(n, local, underlay_ip) for n in networks),
                        key=lambda n: n.bridge))
    by_id = {n.id: n for n in nets}
    nics: list[Nic] = []
    for a in sorted(instances, key=lambda a: a.id):
        if a.id not in running:
            continue
        rules = tuple(dict.fromkeys(rule(r) for r in a.ingress))
        if a.bandwidth_mbps < 0:
            raise NetError(f"invalid bandwidth {a.bandwidth_mbps} Mbit/s for {a.id}")
        nics += [_nic(a.id, names.tap_name(a.id, i), ref, by_id, a.bandwidth_mbps, rules)
                 for i, ref in enumerate(a.nics)]
    for p in sorted(ports, key=lambda p: p.id):
        rules = tuple(dict.fromkeys(rule(r) for r in p.ingress))
        nics += [_nic(p.id, names.port_tap_name(_mac(ref.mac)), ref, by_id, 0, rules)
                 for ref in p.nics]
    edge = _ip(edge_ip, "edge address") if edge_ip else None
    if edge is not None and underlay_ip is None:
        raise NetError("an edge address needs this host's underlay address")
    return NetPlan(nets, tuple(nics), edge)
