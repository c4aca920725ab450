"""Address arithmetic for networks, pure: parsing user CIDRs, picking free addresses."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from cumulo.domain.errors import InvalidInput

IPv4Net = ipaddress.IPv4Network


def parse_cidr(value: str) -> IPv4Net:
    """A user-given IPv4 network for instances: private, prefix /8 to /29, host bits clear."""
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise InvalidInput(f"invalid CIDR {value!r}: {e}", code="invalid_cidr") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidInput(f"{value}: only IPv4 networks are supported", code="invalid_cidr")
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
        raise InvalidInput(f"{value} is not a private range (10/8, 172.16/12, 192.168/16)",
                           code="invalid_cidr")
    if not 8 <= net.prefixlen <= 29:
        raise InvalidInput(f"{value}: the prefix must be between /8 and /29",
                           code="invalid_cidr")
    return net


def gateway_of(net: IPv4Net) -> str:
    """The network's first address: the host bridge, DHCP and DNS server."""
    return str(next(net.hosts()))


def first_free_host(net: IPv4Net, taken: Iterable[str]) -> str | None:
    used = set(taken) | {gateway_of(net)}
    for host in net.hosts():
        if str(host) not in used:
            return str(host)
    return None


def first_free_subnet(pool: IPv4Net, prefix: int, existing: Iterable[IPv4Net]) -> IPv4Net | None:
    nets = list(existing)
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(n) for n in nets):
            return candidate
    return None


def random_mac() -> str:
    """A locally administered MAC in QEMU's 52:54:00 prefix."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)
