"""What the edge must serve (pure): the API's table in, listeners and routes out.

Every value ends up in a listening address, a connect or an `ip route` command line, so it is
validated here: a malformed entry is left out with a reason (the rest is still served), never
interpolated.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cumulo.edge.public_dns import fqdn_key
from cumulo.protocol import EdgeEntry

DEFAULT_SSH_PORT = 22
PROTOS = ("tcp", "udp")


@dataclass(frozen=True)
class Forward:
    """A public endpoint: public_ip:port/proto (root namespace) -> private ip:port (reached
    from the edge's namespace over the underlay)."""

    public_ip: str
    port: int
    private_ip: str
    cidrs: tuple[str, ...]  # clients allowed (matched against the client's address)
    proto: str = "tcp"


@dataclass(frozen=True)
class EchoTarget:
    """A public address whose echo requests are answered when its instance answers one
    (echo_gate.py), from the clients its ICMP rules allow."""

    public_ip: str
    private_ip: str
    cidrs: tuple[str, ...]

    def allows(self, client_ip: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(client_ip)
        except ValueError:
            return False
        return any(addr in ipaddress.IPv4Network(c) for c in self.cidrs)


@dataclass(frozen=True)
class EdgePlan:
    forwards: tuple[Forward, ...]
    routes: tuple[tuple[str, str], ...]  # (instance private ip, via: its host's underlay ip)
    errors: tuple[str, ...]  # entries left out, and why
    echoes: tuple[EchoTarget, ...] = ()
    names: tuple[tuple[str, str], ...] = ()  # (FQDN, public ip): the edge's public DNS


def _ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}") from None


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        raise ValueError(f"invalid rule CIDR {value!r}") from None


def _echo(e: EdgeEntry) -> EchoTarget | None:
    """The entry's ICMP rules (validated by _forwards first); None when none allows ICMP."""
    cidrs = sorted({_cidr(r.cidr) for r in e.rules if r.proto == "icmp"})
    return EchoTarget(e.public_ip, e.private_ip, tuple(cidrs)) if cidrs else None


def _forwards(e: EdgeEntry) -> list[Forward]:
    """One endpoint per allowed TCP or UDP port. A rule without a port (every port) serves
    port 22 only: a loopback listener cannot take all 65535 ports, and SSH is what the public
    endpoint is for. ICMP is served apart (EchoTarget)."""
    public = _ipv4(e.public_ip, "public ip")
    if not public.is_loopback:
        raise ValueError(f"public ip {public} is not a loopback address (all-in-one mode)")
    private = _ipv4(e.private_ip, "private ip")
    if private.is_loopback or private.is_unspecified or private.is_multicast:
        raise ValueError(f"invalid private ip {private}")
    ports: dict[tuple[str, int], set[str]] = {}
    for r in e.rules:
        if r.proto not in PROTOS:
            continue
        port = DEFAULT_SSH_PORT if r.port is None else r.port
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid port {port}")
        ports.setdefault((r.proto, port), set()).add(_cidr(r.cidr))
    return [Forward(str(public), port, str(private), tuple(sorted(c)), proto)
            for (proto, port), c in sorted(ports.items())]


def plan(entries: list[EdgeEntry]) -> EdgePlan:
    forwards: list[Forward] = []
    echoes: list[EchoTarget] = []
    names: dict[str, str] = {}
    routes: dict[str, str] = {}
    errors: list[str] = []
    seen: set[tuple[str, int, str]] = set()
    for e in sorted(entries, key=lambda e: (e.public_ip, e.instance_id)):
        try:
            fs = _forwards(e)
            echo = _echo(e)
            name = fqdn_key(e.fqdn) if e.fqdn else None
            via = str(_ipv4(e.host_ip, "host address")) if e.host_ip else None
        except ValueError as err:
            errors.append(f"{e.public_ip} ({e.instance_id}): {err}")
            continue
        if via is None:
            errors.append(f"{e.public_ip} ({e.instance_id}): its host has no underlay address")
            continue
        if any((f.public_ip, f.port, f.proto) in seen for f in fs):
            errors.append(f"{e.public_ip} ({e.instance_id}): assigned twice")
            continue
        seen.update((f.public_ip, f.port, f.proto) for f in fs)
        routes[fs[0].private_ip if fs else str(_ipv4(e.private_ip, "private ip"))] = via
        forwards.extend(fs)
        if echo is not None:
            echoes.append(echo)
        if name is not None:
            names[name] = str(_ipv4(e.public_ip, "public ip"))
    return EdgePlan(tuple(forwards), tuple(sorted(routes.items())), tuple(errors),
                    tuple(echoes), tuple(sorted(names.items())))
