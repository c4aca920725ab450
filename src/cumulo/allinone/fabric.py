"""The simulated datacenter network of `cumulo up --hosts N`: the underlay.

Every simulated host is a network namespace of its own (`names.netns_name(host_dir)`, where
its bridges, taps and dnsmasq live). The underlay joins them as cables and a switch would
join physical machines: a fabric namespace holding one bridge, and per host a veth pair with
one end on that bridge and the other, `underlay0`, in the host's namespace with the host's
underlay address. Both ends are created directly in their namespaces: the root namespace
never holds an underlay link nor a route to an underlay address (only cumulo's namespaces
do), as it never holds one to a VM network.

VXLAN segments, NBD exports and migration streams between hosts travel over it, and the
edge's inner legs (cumulo.edge: its namespace is plugged in like a host's, at the last
address); the control plane (agents, edge <-> API) does not: it is HTTP to the API's URL, as
on real machines. A single host is plugged in too, for the edge to reach it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cumulo.agent.net import namespace
from cumulo.agent.net.cmd import ip_batch, run
from cumulo.agent.net.names import netns_name

UNDERLAY_IF = "underlay0"  # in each host's namespace
SWITCH = "ufabric"  # the bridge in the fabric namespace


def fabric_netns(state_dir: Path) -> str:
    """The fabric namespace of one cloud (a hash of its state dir: test clouds never share)."""
    return "cu-" + hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:10]


def _port_name(host_dir: Path) -> str:
    """The fabric end of a host's cable (15 bytes at most, unique per host dir)."""
    return "up" + hashlib.sha256(str(host_dir.absolute()).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Port:
    """A host's place on the underlay."""

    host_dir: Path
    address: ipaddress.IPv4Interface  # e.g. 10.250.0.2/24


def addresses(cidr: str, count: int) -> list[ipaddress.IPv4Interface]:
    """The underlay addresses of hosts 1..count: the first usable addresses of `cidr` (the
    last one is the edge's)."""
    net = ipaddress.IPv4Network(cidr)
    usable = list(net.hosts())[:-1][:count]
    if len(usable) < count:
        raise ValueError(f"underlay {cidr} has room for {len(usable)} hosts, not {count}")
    return [ipaddress.IPv4Interface(f"{ip}/{net.prefixlen}") for ip in usable]


def edge_address(cidr: str) -> ipaddress.IPv4Interface:
    """The edge's underlay address (cumulo.edge): the last usable address of `cidr`."""
    net = ipaddress.IPv4Network(cidr)
    return ipaddress.IPv4Interface(f"{list(net.hosts())[-1]}/{net.prefixlen}")


async def ensure(state_dir: Path, ports: list[Port]) -> None:
    """The fabric, and every host's cable plugged in with its address (idempotent)."""
    fabric = fabric_netns(state_dir)
    await namespace.ensure(fabric)
    _, have = await run("ip", "-n", fabric, "-o", "link", "show")
    lines = [] if f": {SWITCH}:" in have else [
        f"link add {SWITCH} type bridge forward_delay 0 stp_state 0"]
    lines.append(f"link set {SWITCH} up")
    await ip_batch(fabric, lines)
    for port in ports:
        await _plug(fabric, port)


async def _plug(fabric: str, port: Port) -> None:
    host_ns = netns_name(port.host_dir)
    await namespace.ensure(host_ns)
    cable = _port_name(port.host_dir)
    _, have = await run("ip", "-n", host_ns, "-o", "link", "show")
    if f": {UNDERLAY_IF}@" not in have:
        # A host namespace made anew lost its end; the fabric's end went with it.
        await run("ip", "-n", fabric, "link", "del", cable, check=False)
        await run("ip", "-n", fabric, "link", "add", cable, "type", "veth", "peer", "name",
                  UNDERLAY_IF, "netns", host_ns)
    await ip_batch(fabric, [f"link set {cable} master {SWITCH} up"])
    await ip_batch(host_ns, [f"addr replace {port.address} dev {UNDERLAY_IF}",
                             f"link set {UNDERLAY_IF} up"])


async def teardown(state_dir: Path) -> None:
    """Remove the fabric namespace (its cables' ends in the hosts go with it)."""
    await namespace.delete(fabric_netns(state_dir))
