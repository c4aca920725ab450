"""Bridges (one per network, holding the gateway address and MAC), tap attachment, static
neighbours."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cumulo.agent.net import names
from cumulo.agent.net.cmd import ip_batch, run
from cumulo.agent.net.plan import Net, Nic


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # "bridge", "tun", "ifb", "" ...
    master: str | None


async def links(netns: str) -> dict[str, Link]:
    """Every interface in the namespace."""
    _, out = await run("ip", "-n", netns, "-d", "-j", "link", "show")
    result: dict[str, Link] = {}
    for item in json.loads(out or "[]"):
        info = item.get("linkinfo") or {}
        result[item["ifname"]] = Link(item["ifname"], info.get("info_kind", ""), item.get("master"))
    return result


def bridge_lines(net: Net, present: bool) -> list[str]:
    lines = [] if present else [f"link add {net.bridge} type bridge forward_delay 0 stp_state 0"]
    return [
        *lines,
        f"link set {net.bridge} address {net.gateway_mac}",
        f"addr replace {net.gateway}/{net.prefixlen} dev {net.bridge}",
        f"link set {net.bridge} up",
    ]


def attach_lines(nic: Nic) -> list[str]:
    return [f"link set {nic.tap} master {nic.bridge} up"]


def unplug_lines(present: dict[str, Link], nics: tuple[Nic, ...]) -> list[str]:
    """A bare-metal port no longer assigned (its node is cleaning, or in error) is unplugged
    from its bridge: a VM's tap goes with its QEMU, a port's tap stays while its machine
    runs."""
    plugged = {n.tap for n in nics}
    return [f"link set {n} nomaster" for n, link in sorted(present.items())
            if names.is_port_tap(n) and link.master and n not in plugged]


def neighbour_lines(net: Net) -> list[str]:
    """Permanent ARP entries: the first packet to a booting VM does not wait for ARP retries."""
    return [
        f"neigh replace {h.ip} lladdr {h.mac} dev {net.bridge} nud permanent" for h in net.hosts
    ]


async def converge(netns: str, nets: tuple[Net, ...], nics: tuple[Nic, ...]) -> None:
    present = await links(netns)
    stale = [n for n, link in present.items() if link.kind == "bridge" and n.startswith("cb")]
    wanted = {n.bridge for n in nets}
    await ip_batch(netns, [f"link del {b}" for b in stale if b not in wanted], check=False)
    lines: list[str] = []
    for net in nets:
        lines += bridge_lines(net, net.bridge in present)
    for nic in nics:
        if nic.tap not in present:
            continue  # QEMU has not created it (yet); the next pass attaches it
        lines += attach_lines(nic)
    lines += unplug_lines(present, nics)
    await ip_batch(netns, lines)
    # Stale neighbours would only matter for removed records: flush and set, per bridge.
    neigh: list[str] = []
    for net in nets:
        neigh += [f"neigh flush dev {net.bridge} nud permanent", *neighbour_lines(net)]
    await ip_batch(netns, neigh, check=False)
