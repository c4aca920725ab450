"""The edge's public DNS (pure answers, and the server over real UDP on loopback): each
instance's FQDN answers its public address; other names of the cloud's domain do not exist;
names outside it are refused."""

from __future__ import annotations

import asyncio
import socket

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from cumulo.edge.public_dns import PublicDns, answer, fqdn_key
from cumulo.edge.table import plan
from cumulo.protocol import EdgeEntry, FirewallRule

NAMES = {"web.default.local-1a.cumulo.internal": "127.100.0.5"}
DOMAIN = "cumulo.internal"


def ask(name: str, rdtype: str = "A") -> dns.message.Message:
    wire = answer(dns.message.make_query(name, rdtype).to_wire(), NAMES, DOMAIN)
    assert wire is not None
    return dns.message.from_wire(wire)


def test_an_instances_fqdn_answers_its_public_address_authoritatively() -> None:
    r = ask("Web.default.local-1a.cumulo.internal.")  # DNS names are case-insensitive
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    ((rr,),) = [list(a) for a in r.answer]
    assert rr.address == "127.100.0.5" and r.answer[0].ttl == 5


def test_other_names_and_types() -> None:
    aaaa = ask("web.default.local-1a.cumulo.internal", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer  # exists, no such record
    assert ask("gone.default.local-1a.cumulo.internal").rcode() == dns.rcode.NXDOMAIN
    outside = ask("example.com")
    assert outside.rcode() == dns.rcode.REFUSED and not outside.flags & dns.flags.AA
    assert answer(b"\x00garbage", NAMES, DOMAIN) is None
    reply = dns.message.make_response(dns.message.make_query("example.com", "A")).to_wire()
    assert answer(reply, NAMES, DOMAIN) is None  # a response is never answered


def test_the_plan_serves_each_entrys_fqdn_and_leaves_a_bad_one_out() -> None:
    def entry(public: str, fqdn: str) -> EdgeEntry:
        return EdgeEntry(public_ip=public, instance_id="i-" + public[-1], private_ip="10.9.1."
                         + public[-1], host_ip="10.250.0.2",
                         rules=[FirewallRule(proto="tcp", port=22)], fqdn=fqdn)

    p = plan([entry("127.100.0.5", "Web.p.z.cumulo.internal."),
              entry("127.100.0.6", "bad..name")])
    assert p.names == (("web.p.z.cumulo.internal", "127.100.0.5"),)
    assert len(p.errors) == 1 and "invalid FQDN" in p.errors[0]
    with pytest.raises(ValueError):
        fqdn_key("a" * 64 + ".x")  # a label longer than 63


async def test_the_server_answers_over_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a free port (53 is the real one)
    server = PublicDns("127.0.0.1", DOMAIN, port)
    assert await server.update(tuple(NAMES.items())) == []
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.setblocking(False)
            await loop.sock_connect(c, ("127.0.0.1", port))
            await loop.sock_sendall(c, dns.message.make_query(
                "web.default.local-1a.cumulo.internal", "A").to_wire())
            r = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(c, 4096), 5))
        assert [rr.address for rr in r.answer[0]] == ["127.100.0.5"]
    finally:
        server.close()
