"""What the edge must serve (pure): the API's table in, listeners and routes out.

Every value ends up in a listening address, a connect or an `ip route` command line, so it is
validated here: a malformed entry is left out with a reason (the rest is still served), never
interpolated.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

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
class EdgePlan:
    forwards: tuple[Forward, ...]
    routes: tuple[tuple[str, str], ...]  # (instance private ip, via: its host's underlay ip)
    errors: tuple[str, ...]  # entries left out, and why


def _ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}") from None


def _forwards(e: EdgeEntry) -> list[Forward]:
    """One endpoint per allowed TCP or UDP port. A rule without a port (every port) serves
    port 22 only: a loopback listener cannot take all 65535 ports, and SSH is what the public
    endpoint is for. ICMP is answered by the machine itself (a loopback address)."""
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
        try:
            cidr = ipaddress.IPv4Network(r.cidr, strict=False)
        except ValueError:
            raise ValueError(f"invalid rule CIDR {r.cidr!r}") from None
        ports.setdefault((r.proto, port), set()).add(str(cidr))
    return [Forward(str(public), port, str(private), tuple(sorted(c)), proto)
            for (proto, port), c in sorted(ports.items())]


def plan(entries: list[EdgeEntry]) -> EdgePlan:
    forwards: list[Forward] = []
    routes: dict[str, str] = {}
    errors: list[str] = []
    seen: set[tuple[str, int, str]] = set()
    for e in sorted(entries, key=lambda e: (e.public_ip, e.instance_id)):
        try:
            fs = _forwards(e)
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
    return EdgePlan(tuple(forwards), tuple(sorted(routes.items())), tuple(errors))
