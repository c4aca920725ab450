"""The host's nftables rulesets (rendered by a pure function) and their atomic application.

Two tables, replaced together in ONE `nft -f` transaction inside the host namespace:

- `inet cumulo` (stateful; bridged IPv4 reaches it through br_netfilter, see namespace.py):
  forward: established/related accepted; nothing is routed between networks; traffic TO an
  instance NIC goes through its `to_<tap>` chain (its ingress rules, then drop); traffic FROM
  instances is allowed. input: instances may reach their gateway for DHCP, DNS and ping only.
  output (the namespace itself: dnsmasq) is trusted.
  From the underlay (the host reaches the edge's address there, see cumulo.edge), only the
  edge's packets are forwarded, and only to an instance's ports its rules allow, whatever
  their CIDRs: the edge matched the client's address against them already (the packets carry
  the edge's own address); of ICMP, echo requests when a rule allows ICMP. Back to the edge,
  an instance's packets from those ports pass without a connection of this host's: after a
  live migration the flow arrives here mid-stream, and the guest may be the first to send.
- `bridge cumulo` (stateless, before everything): anti-spoofing per tap (MAC and IPv4 source
  must be the instance's own; no IPv6); and at each network's VXLAN port, the anycast
  gateway kept on its host: every host's bridge holds the same gateway address and MAC, so
  nothing from or to the gateway (its MAC, its address, ARP about it) and no DHCP crosses
  between hosts, in either direction (each host's gateway answers its own instances only).
"""

from __future__ import annotations

from cumulo.agent.net.cmd import run
from cumulo.agent.net.plan import Net, Nic, Rule

TABLE = "cumulo"
ANYWHERE = "0.0.0.0/0"


def _rule(r: Rule) -> str:
    src = "" if r.cidr == ANYWHERE else f"ip saddr {r.cidr} "
    if r.proto == "icmp":
        return f"{src}meta l4proto icmp accept"
    if r.port is None:
        return f"{src}meta l4proto {r.proto} accept"
    return f"{src}{r.proto} dport {r.port} accept"


UNDERLAY_IF = "underlay0"  # as cumulo.allinone.fabric names it in each host's namespace


def _edge_rule(r: Rule, side: str) -> str | None:
    """What the edge may send to (side "dport") or receive from ("sport") an instance: its
    echo requests to an instance whose rules allow ICMP answer a ping of a public address
    (cumulo.edge.echo_gate), and the instance's replies go back."""
    if r.proto == "icmp":
        kind = "echo-request" if side == "dport" else "echo-reply"
        return f"icmp type {kind} accept"
    if r.port is None:
        return f"meta l4proto {r.proto} accept"
    return f"{r.proto} {side} {r.port} accept"


def _edge_forward(nics: tuple[Nic, ...], edge_ip: str | None) -> list[str]:
    if edge_ip is None:
        return []
    u = f'"{UNDERLAY_IF}"'
    out = [f"\t\tiifname {u} ip saddr != {edge_ip} drop"]
    out += [f'\t\tiifname {u} oifname "{nic.bridge}" ip daddr {nic.ip} jump edge_to_{nic.tap}'
            for nic in nics]
    out.append(f"\t\tiifname {u} drop")
    out += [f'\t\tiifname "{nic.bridge}" oifname {u} ip saddr {nic.ip} ip daddr {edge_ip} '
            f"jump edge_from_{nic.tap}" for nic in nics]
    return out


def _edge_chains(nics: tuple[Nic, ...], edge_ip: str | None) -> list[str]:
    if edge_ip is None:
        return []
    out: list[str] = []
    for nic in nics:
        for chain, side in (("edge_to", "dport"), ("edge_from", "sport")):
            rules = dict.fromkeys(r for r in map(lambda r: _edge_rule(r, side), nic.rules) if r)
            out += ["", f"\tchain {chain}_{nic.tap} {{"]
            out += [f"\t\t{r}" for r in rules]
            out += ["\t\tdrop", "\t}"]
    return out


def render(nets: tuple[Net, ...], nics: tuple[Nic, ...], edge_ip: str | None = None) -> str:
    """The full nft script: recreate both tables atomically (add, delete, define)."""
    out = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table bridge {TABLE}",
        f"delete table bridge {TABLE}",
        "",
        f"table inet {TABLE} {{",
    ]
    out += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        "\t\tct state established,related accept",
    ]
    for n in nets:
        b = n.bridge
        out += [
            f'\t\tiifname "{b}" udp dport 67 accept',
            f'\t\tiifname "{b}" ip daddr {n.gateway} udp dport 53 accept',
            f'\t\tiifname "{b}" ip daddr {n.gateway} tcp dport 53 accept',
            f'\t\tiifname "{b}" ip daddr {n.gateway} icmp type echo-request accept',
        ]
    out += ['\t\tiifname "cb*" drop', "\t}", ""]
    out += [
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy drop;",
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        "\t\tmeta nfproto ipv6 drop",
    ]
    out += _edge_forward(nics, edge_ip)
    for n in nets:
        out.append(f'\t\tiifname "{n.bridge}" oifname != "{n.bridge}" drop')
    for nic in nics:
        out.append(f'\t\toifname "{nic.bridge}" ip daddr {nic.ip} jump to_{nic.tap}')
    for n in nets:
        out.append(f'\t\tiifname "{n.bridge}" accept')
    out += ["\t}"]
    for nic in nics:
        out += ["", f"\tchain to_{nic.tap} {{"]
        out += [f"\t\t{_rule(r)}" for r in nic.rules]
        out += ["\t\tdrop", "\t}"]
    out += _edge_chains(nics, edge_ip)
    out += ["}", "", f"table bridge {TABLE} {{"]
    for hook in ("forward", "input"):
        out += [
            f"\tchain {hook} {{",
            f"\t\ttype filter hook {hook} priority -200; policy accept;",
        ]
        out += [f'\t\tiifname "{nic.tap}" jump from_{nic.tap}' for nic in nics]
        out += ["\t}", ""]
    out += _segment_chains(nets)
    for nic in nics:
        out += [
            f"\tchain from_{nic.tap} {{",
            f"\t\tether saddr != {nic.mac} drop",
            f"\t\tether type ip ip saddr != {{ 0.0.0.0, {nic.ip} }} drop",
            f"\t\tether type arp arp saddr ip != {{ 0.0.0.0, {nic.ip} }} drop",
            "\t\tether type ip6 drop",
            "\t}",
            "",
        ]
    if out[-1] == "":
        out.pop()
    out.append("}")
    return "\n".join(out) + "\n"


def _segment_chains(nets: tuple[Net, ...]) -> list[str]:
    segs = [(n.segment.device, n) for n in nets if n.segment is not None]
    if not segs:
        return []
    out = []
    for chain, hook, side in (("segments_in", "prerouting", "iifname"),
                              ("segments_out", "postrouting", "oifname")):
        out += [f"\tchain {chain} {{",
                f"\t\ttype filter hook {hook} priority -200; policy accept;"]
        for dev, n in segs:
            m = f'{side} "{dev}"'
            out += [
                f"\t\t{m} ether saddr {n.gateway_mac} drop",
                f"\t\t{m} ether daddr {n.gateway_mac} drop",
                f"\t\t{m} arp saddr ip {n.gateway} drop",
                f"\t\t{m} arp daddr ip {n.gateway} drop",
                f"\t\t{m} ip saddr {n.gateway} drop",
                f"\t\t{m} ip daddr {n.gateway} drop",
                f"\t\t{m} udp dport {{ 67, 68 }} drop",
                f"\t\t{m} ether type ip6 drop",
            ]
        out += ["\t}", ""]
    return out


def render_empty() -> str:
    """Remove both tables (teardown of the last network)."""
    return (
        "\n".join(
            [
                f"table inet {TABLE}",
                f"delete table inet {TABLE}",
                f"table bridge {TABLE}",
                f"delete table bridge {TABLE}",
            ]
        )
        + "\n"
    )


async def apply(netns: str, script: str) -> None:
    """One transaction: either the whole new ruleset is in force, or the old one still is."""
    await run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=script)
