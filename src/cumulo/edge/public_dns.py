"""The instances' public names: an authoritative DNS server of the edge.

What a cloud gives: an instance's FQDN (`<name>.<project>.<zone>.<cloud domain>`) resolves,
from outside the cloud, to its public address, while inside its project's network the same
name resolves to its private address (the hosts' dnsmasq): a split horizon. The edge
answers, over UDP on port 53 of the public pool's last usable address (root namespace:
127.100.255.254 by default, see netaddr.public_dns_address), an A query for the FQDN of every
instance that has a public address; any other name of the cloud's domain is NXDOMAIN, and
names outside it are REFUSED (it is no recursive resolver: point a resolver at it for the
cloud's domain only, see the README). Answers are built from the edge's table, so an address
moved to another instance answers anew at once (TTL 5 s for caches).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import structlog

log = structlog.get_logger("cumulo.edge")

TTL_S = 5
PORT = 53


def answer(query: bytes, names: Mapping[str, str], domain: str) -> bytes | None:
    """The response to `query` (pure), `names` mapping lowercase FQDNs (no final dot) to
    public addresses; None for what is not a DNS query (no answer is sent)."""
    try:
        q = dns.message.from_wire(query)
    except (dns.exception.DNSException, ValueError):
        return None
    if q.flags & dns.flags.QR:
        return None
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    if q.opcode() != dns.opcode.QUERY or len(q.question) != 1:
        r.set_rcode(dns.rcode.NOTIMP if q.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
        return r.to_wire()
    question = q.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    ip = names.get(name)
    if ip is not None:
        if question.rdclass == dns.rdataclass.IN and question.rdtype in (dns.rdatatype.A,
                                                                        dns.rdatatype.ANY):
            r.answer.append(dns.rrset.from_text(question.name, TTL_S, dns.rdataclass.IN,
                                                dns.rdatatype.A, ip))
        # else: the name exists, with no record of that type (NOERROR, empty)
    elif name == domain or name.endswith("." + domain):
        r.set_rcode(dns.rcode.NXDOMAIN)
    else:
        r.flags &= ~dns.flags.AA
        r.set_rcode(dns.rcode.REFUSED)
    return r.to_wire()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: PublicDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.server.names, self.server.domain)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class PublicDns:
    def __init__(self, address: str, domain: str, port: int = PORT) -> None:
        self.address = address
        self.port = port
        self.domain = domain.lower().rstrip(".")
        self.names: dict[str, str] = {}
        self._transport: asyncio.BaseTransport | None = None

    async def update(self, names: tuple[tuple[str, str], ...]) -> list[str]:
        """Serve `names` ((fqdn, public address) pairs); listens at the first call (and
        tries again at each next one while the address cannot be had)."""
        self.names = dict(names)
        if self._transport is not None:
            return []
        try:
            self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.address, self.port))
        except OSError as e:
            return [f"the public DNS cannot listen on {self.address}:{self.port}/udp: {e}"]
        log.info("public_dns_listening", address=self.address, port=self.port)
        return []

    def close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None


def fqdn_key(value: str) -> str:
    """An FQDN as `answer` looks it up; ValueError when it is not a valid DNS name."""
    try:
        name = dns.name.from_text(value.rstrip(".") + ".")
    except dns.exception.DNSException:
        raise ValueError(f"invalid FQDN {value!r}") from None
    return name.to_text(omit_final_dot=True).lower()
