"""A network's VXLAN segment on this host: one device per network, a port of its bridge,
sending to the other hosts serving the network over the underlay. No multicast and no
learning: the forwarding entries come from the API's records (see cumulo.services.segments):
one per remote MAC (-> the underlay address of the host running it) and, for broadcast and
unknown destinations, one all-zeros entry per other host serving the network (the flood
list). Pure planning (`segment`, `fdb_lines`) and its application (`converge`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cumulo.agent.net import names
from cumulo.agent.net.cmd import NetError, ip_batch, run

PORT = 4789  # IANA's VXLAN port
OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
UNDERLAY_MTU = 1500
MTU = UNDERLAY_MTU - OVERHEAD  # what the guests get (DHCP option 26), and the device's MTU
MAX_VNI = 2**24 - 1
FLOOD = "00:00:00:00:00:00"

Entry = tuple[str, str]  # (MAC, underlay address of the host it is sent to)


@dataclass(frozen=True)
class Segment:
    device: str
    bridge: str
    vni: int
    local_ip: str  # this host's underlay address (the tunnel's source)
    peers: tuple[str, ...]  # the other hosts serving the network: the flood list
    macs: tuple[Entry, ...]  # remote NICs, each to the host running it

    def entries(self) -> set[Entry]:
        return set(self.macs) | {(FLOOD, p) for p in self.peers}


def segment(network_id: str, bridge: str, vni: int, local_ip: str | None,
            remote: Iterable[Entry]) -> Segment | None:
    """The segment this host wants for a network, or None (no underlay address, or a network
    without a VNI: it stays on this host). `remote`: (MAC, host address) of the network's
    NICs that this host does not run (valid MACs; addresses are checked here)."""
    if not local_ip or not vni:
        return None
    if not 0 < vni <= MAX_VNI:
        raise NetError(f"invalid VNI {vni}")
    local = _ip(local_ip)
    macs = {}
    for mac, where in remote:
        if not where:
            continue  # its host has no underlay address: nothing can reach it
        dst = _ip(where)
        if dst != local:  # a record not (yet) among our instances: never a tunnel to us
            macs[mac] = dst
    return Segment(device=names.vxlan_name(network_id), bridge=bridge, vni=vni,
                   local_ip=local, peers=tuple(sorted(set(macs.values()), key=_order)),
                   macs=tuple(sorted(macs.items())))


def _ip(value: str) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise NetError(f"invalid underlay address {value!r}") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise NetError(f"invalid underlay address {value!r}")
    return str(ip)


def _order(ip: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(ip)


def parse_fdb(text: str) -> dict[str, set[Entry]]:
    """`bridge -j fdb show` -> device -> its remote entries (the learned and local entries
    of the bridge itself are not ours)."""
    out: dict[str, set[Entry]] = {}
    for e in json.loads(text or "[]"):
        if "dst" in e and "self" in e.get("flags", []) and e.get("ifname"):
            out.setdefault(e["ifname"], set()).add((e["mac"].lower(), e["dst"]))
    return out


def fdb_lines(device: str, want: set[Entry], have: set[Entry]) -> list[str]:
    """`bridge -batch` lines turning `have` into `want`: removals first (a MAC that moved is
    removed from its old host, then added with the new one)."""
    lines = [f"fdb del {mac} dev {device} dst {dst} self" for mac, dst in sorted(have - want)]
    for mac, dst in sorted(want - have):
        verb = "append" if mac == FLOOD else "replace"  # one entry per MAC but the flood's
        lines.append(f"fdb {verb} {mac} dev {device} dst {dst} self permanent")
    return lines


def device_lines(seg: Segment, present: dict[str, tuple[int, str]]) -> list[str]:
    """`ip -batch` lines for the device: made (again, when its VNI or source changed), on its
    bridge, up. `present`: device -> (VNI, local address) of the VXLAN devices there are."""
    lines = []
    have = present.get(seg.device)
    if have is not None and have != (seg.vni, seg.local_ip):
        lines.append(f"link del {seg.device}")
        have = None
    if have is None:
        lines.append(f"link add {seg.device} type vxlan id {seg.vni} local {seg.local_ip} "
                     f"dstport {PORT} nolearning")
    lines.append(f"link set {seg.device} master {seg.bridge} mtu {MTU} up")
    return lines


async def _devices(netns: str) -> dict[str, tuple[int, str]]:
    _, out = await run("ip", "-n", netns, "-d", "-j", "link", "show", "type", "vxlan")
    found = {}
    for item in json.loads(out or "[]"):
        data = (item.get("linkinfo") or {}).get("info_data") or {}
        found[item["ifname"]] = (int(data.get("id", 0)), str(data.get("local", "")))
    return found


async def converge(netns: str, segments: tuple[Segment, ...]) -> None:
    """Every segment's device on its bridge with exactly its forwarding entries; devices of
    networks this host no longer serves (or serves alone without an underlay) removed."""
    present = await _devices(netns)
    wanted = {s.device for s in segments}
    stale = [d for d in present if names.is_cumulo_vxlan(d) and d not in wanted]
    await ip_batch(netns, [f"link del {d}" for d in stale], check=False)
    lines: list[str] = []
    for seg in segments:
        lines += device_lines(seg, present)
    await ip_batch(netns, lines)
    if not segments:
        return
    _, out = await run("bridge", "-n", netns, "-j", "fdb", "show")
    have = parse_fdb(out)
    fdb: list[str] = []
    for seg in segments:
        fdb += fdb_lines(seg.device, seg.entries(), have.get(seg.device, set()))
    if fdb:  # every line tried (-force); a failure fails the pass, and the next one retries
        await run("bridge", "-n", netns, "-force", "-batch", "-", stdin="\n".join(fdb) + "\n")
