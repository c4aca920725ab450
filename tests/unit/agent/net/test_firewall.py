"""Golden nft rulesets: any change to the rendered firewall must show up here on purpose."""

from __future__ import annotations

import dataclasses

from cumulo.agent.net import firewall
from cumulo.agent.net.plan import Host, Net, Nic, Rule

NET_A = Net("net-a", "cbaaaaaaaaaaaa", "10.9.1.0/24", "10.9.1.1", 24, "255.255.255.0",
            "10.9.1.0", "p1.z.test",
            (Host("web", "web.p1.z.test", "10.9.1.10", "52:54:00:00:00:0a"),))  # fmt: skip
NET_B = Net("net-b", "cbbbbbbbbbbbbb", "10.9.2.0/24", "10.9.2.1", 24, "255.255.255.0",
            "10.9.2.0", "p2.z.test", ())  # fmt: skip
NIC = Nic("i-a", "ct11111111110", "cbaaaaaaaaaaaa", "10.9.1.10", "52:54:00:00:00:0a", 0, (
    Rule("tcp", 22, "0.0.0.0/0"),
    Rule("tcp", 8080, "10.0.0.0/8"),
    Rule("udp", None, "0.0.0.0/0"),
    Rule("icmp", None, "192.0.2.0/24"),
))  # fmt: skip

GOLDEN = """\
table inet cumulo
delete table inet cumulo
table bridge cumulo
delete table bridge cumulo

table inet cumulo {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname "cbaaaaaaaaaaaa" udp dport 67 accept
\t\tiifname "cbaaaaaaaaaaaa" ip daddr 10.9.1.1 udp dport 53 accept
\t\tiifname "cbaaaaaaaaaaaa" ip daddr 10.9.1.1 tcp dport 53 accept
\t\tiifname "cbaaaaaaaaaaaa" ip daddr 10.9.1.1 icmp type echo-request accept
\t\tiifname "cbbbbbbbbbbbbb" udp dport 67 accept
\t\tiifname "cbbbbbbbbbbbbb" ip daddr 10.9.2.1 udp dport 53 accept
\t\tiifname "cbbbbbbbbbbbbb" ip daddr 10.9.2.1 tcp dport 53 accept
\t\tiifname "cbbbbbbbbbbbbb" ip daddr 10.9.2.1 icmp type echo-request accept
\t\tiifname "cb*" drop
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tct state invalid drop
\t\tmeta nfproto ipv6 drop
\t\tiifname "cbaaaaaaaaaaaa" oifname != "cbaaaaaaaaaaaa" drop
\t\tiifname "cbbbbbbbbbbbbb" oifname != "cbbbbbbbbbbbbb" drop
\t\toifname "cbaaaaaaaaaaaa" ip daddr 10.9.1.10 jump to_ct11111111110
\t\tiifname "cbaaaaaaaaaaaa" accept
\t\tiifname "cbbbbbbbbbbbbb" accept
\t}

\tchain to_ct11111111110 {
\t\ttcp dport 22 accept
\t\tip saddr 10.0.0.0/8 tcp dport 8080 accept
\t\tmeta l4proto udp accept
\t\tip saddr 192.0.2.0/24 meta l4proto icmp accept
\t\tdrop
\t}
}

table bridge cumulo {
\tchain forward {
\t\ttype filter hook forward priority -200; policy accept;
\t\tiifname "ct11111111110" jump from_ct11111111110
\t}

\tchain input {
\t\ttype filter hook input priority -200; policy accept;
\t\tiifname "ct11111111110" jump from_ct11111111110
\t}

\tchain from_ct11111111110 {
\t\tether saddr != 52:54:00:00:00:0a drop
\t\tether type ip ip saddr != { 0.0.0.0, 10.9.1.10 } drop
\t\tether type arp arp saddr ip != { 0.0.0.0, 10.9.1.10 } drop
\t\tether type ip6 drop
\t}
}
"""


def test_golden_ruleset() -> None:
    assert firewall.render((NET_A, NET_B), (NIC,)) == GOLDEN


def test_no_networks_still_replaces_both_tables() -> None:
    text = firewall.render((), ())
    assert text.startswith("table inet cumulo\ndelete table inet cumulo\n")
    assert "jump" not in text and 'iifname "cb*" drop' in text


def test_empty_ruleset_removes_the_tables() -> None:
    assert firewall.render_empty().splitlines() == [
        "table inet cumulo", "delete table inet cumulo",
        "table bridge cumulo", "delete table bridge cumulo",
    ]  # fmt: skip


def test_with_an_edge_only_its_packets_come_in_from_the_underlay_to_allowed_ports() -> None:
    text = firewall.render((NET_A,), (NIC,), "10.250.0.254")
    forward = text[text.index("chain forward"):text.index("chain to_")]
    # Before the networks' own rules: the underlay is not a network of this host.
    assert forward.index('iifname "underlay0" ip saddr != 10.250.0.254 drop') < forward.index(
        'iifname "underlay0" oifname "cbaaaaaaaaaaaa" ip daddr 10.9.1.10 jump '
        "edge_to_ct11111111110") < forward.index('iifname "underlay0" drop') < forward.index(
        'iifname "cbaaaaaaaaaaaa" oifname != "cbaaaaaaaaaaaa" drop')
    assert ('iifname "cbaaaaaaaaaaaa" oifname "underlay0" ip saddr 10.9.1.10 ip daddr '
            "10.250.0.254 jump edge_from_ct11111111110") in forward
    # The rules' ports, without their CIDRs (the edge matched the client against them); of
    # ICMP, the edge's echo requests and their replies (it pings for a client's ping).
    assert ("\tchain edge_to_ct11111111110 {\n\t\ttcp dport 22 accept\n\t\ttcp dport 8080 "
            "accept\n\t\tmeta l4proto udp accept\n\t\ticmp type echo-request accept\n"
            "\t\tdrop\n\t}") in text
    assert ("\tchain edge_from_ct11111111110 {\n\t\ttcp sport 22 accept\n\t\ttcp sport 8080 "
            "accept\n\t\tmeta l4proto udp accept\n\t\ticmp type echo-reply accept\n"
            "\t\tdrop\n\t}") in text
    # Without an ICMP rule, no ICMP from the edge either.
    tcp_only = firewall.render((NET_A,), (dataclasses.replace(NIC, rules=NIC.rules[:1]),),
                               "10.250.0.254")
    assert "icmp type echo-request accept\n\t\tdrop" not in tcp_only.split("chain edge_to_")[1]
    # Without an edge, nothing about the underlay.
    assert "underlay0" not in firewall.render((NET_A,), (NIC,))
