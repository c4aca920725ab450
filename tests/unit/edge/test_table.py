"""The edge's plan (pure): the API's table in, listeners and routes out; and the route
changes from what the namespace holds to what the plan wants."""

from __future__ import annotations

import pytest

from cumulo.edge import routes
from cumulo.edge.table import Forward, plan
from cumulo.protocol import EdgeEntry, FirewallRule


def entry(public: str = "127.100.0.5", iid: str = "i-a", private: str = "10.9.1.10",
          host: str | None = "10.250.0.2", rules: list[FirewallRule] | None = None
          ) -> EdgeEntry:
    return EdgeEntry(public_ip=public, instance_id=iid, private_ip=private, host_ip=host,
                     rules=[FirewallRule(proto="tcp", port=22)] if rules is None else rules)


def test_one_endpoint_per_tcp_and_udp_port_and_port_22_for_all_ports() -> None:
    p = plan([entry(rules=[
        FirewallRule(proto="tcp", port=None, cidr="127.0.0.0/8"),
        FirewallRule(proto="tcp", port=22),
        FirewallRule(proto="tcp", port=8080, cidr="10.0.0.0/8"),
        FirewallRule(proto="udp", port=53, cidr="127.0.0.1/32"),
        FirewallRule(proto="icmp"),
    ])])  # fmt: skip
    assert p.forwards == (
        Forward("127.100.0.5", 22, "10.9.1.10", ("0.0.0.0/0", "127.0.0.0/8"), "tcp"),
        Forward("127.100.0.5", 8080, "10.9.1.10", ("10.0.0.0/8",), "tcp"),
        Forward("127.100.0.5", 53, "10.9.1.10", ("127.0.0.1/32",), "udp"),
    )
    assert p.routes == (("10.9.1.10", "10.250.0.2"),) and p.errors == ()


def test_a_migrated_instance_changes_its_route_only() -> None:
    before, after = plan([entry()]), plan([entry(host="10.250.0.3")])
    assert before.forwards == after.forwards
    assert after.routes == (("10.9.1.10", "10.250.0.3"),)


def test_a_moved_address_targets_the_other_instance() -> None:
    p = plan([entry(iid="i-b", private="10.9.1.11", host="10.250.0.3")])
    assert p.forwards[0].private_ip == "10.9.1.11"
    assert p.routes == (("10.9.1.11", "10.250.0.3"),)


@pytest.mark.parametrize("bad", [
    {"public": "192.0.2.1"},  # not a loopback address
    {"public": "127.100.0.5; rm"},
    {"private": "10.9.1.10/8"},
    {"private": "127.0.0.1"},
    {"host": "10.250.0.2 dev lo"},
    {"host": None},  # nowhere to send it
    {"rules": [FirewallRule(proto="tcp", port=70000)]},
    {"rules": [FirewallRule(proto="tcp", port=22, cidr="10.0.0.0/8; drop")]},
])  # fmt: skip
def test_a_malformed_entry_is_left_out_with_its_reason_and_the_rest_served(
        bad: dict[str, object]) -> None:
    good = entry(public="127.100.0.6", iid="i-b", private="10.9.1.11")
    p = plan([entry(**bad), good])  # type: ignore[arg-type]
    assert len(p.errors) == 1 and "i-a" in p.errors[0]
    assert {f.private_ip for f in p.forwards} == {"10.9.1.11"}
    assert p.routes == (("10.9.1.11", "10.250.0.2"),)


def test_an_endpoint_assigned_twice_is_served_once() -> None:
    p = plan([entry(), entry(iid="i-b", private="10.9.1.11")])
    assert [f.private_ip for f in p.forwards] == ["10.9.1.10"]
    assert p.errors and "twice" in p.errors[0]


def test_route_changes_replace_what_moved_and_remove_what_left() -> None:
    have = {"10.9.1.10": "10.250.0.2", "10.9.1.12": "10.250.0.2", "10.9.1.13": "10.250.0.4"}
    want = (("10.9.1.10", "10.250.0.3"), ("10.9.1.11", "10.250.0.2"),
            ("10.9.1.13", "10.250.0.4"))
    assert routes.changes(have, want) == [
        "route del 10.9.1.12/32 proto static",
        "route replace 10.9.1.10/32 via 10.250.0.3 proto static",
        "route replace 10.9.1.11/32 via 10.250.0.2 proto static",
    ]
    assert routes.changes(dict(want), want) == []


def test_echo_requests_are_served_from_the_clients_the_icmp_rules_allow() -> None:
    p = plan([entry(rules=[FirewallRule(proto="icmp", cidr="127.0.0.0/8"),
                           FirewallRule(proto="icmp", cidr="192.0.2.7/24")]),
              entry(public="127.100.0.6", iid="i-b", private="10.9.1.11")])  # tcp 22 only
    assert [(e.public_ip, e.private_ip, e.cidrs) for e in p.echoes] == [
        ("127.100.0.5", "10.9.1.10", ("127.0.0.0/8", "192.0.2.0/24"))]
    assert p.echoes[0].allows("127.0.0.1") and p.echoes[0].allows("192.0.2.200")
    assert not p.echoes[0].allows("10.0.0.1") and not p.echoes[0].allows("bogus")
