"""Where an image import may download from: the public Internet, and the networks an operator
allows (`image_url_allowed_networks`). Everything else a URL can point at (loopback, private
and link-local addresses: the cloud's own API and database, a host's services, a metadata
address) is refused, so that an import is not a way to reach them (SSRF).

The check is made where the connection is made, for every request (each redirect too), on the
address connected to: the transport resolves the name itself and connects to the address it
checked. Resolving twice would let a name answer one address to the check and another to the
connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import httpx

from cumulo.domain.errors import Forbidden

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlNotAllowed(Forbidden):
    code = "url_not_allowed"


# IPv6 ranges Python 3.11's `is_global` calls global but that are no public destination:
# deprecated site-local (fec0::/10), deprecated IPv4-compatible (::a.b.c.d), the local-use
# NAT64 prefix.
_NOT_PUBLIC = tuple(ipaddress.IPv6Network(n) for n in ("fec0::/10", "::/96", "64:ff9b:1::/48"))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the IPv4 address is the last 32 bits


def is_public(a: IPAddress) -> bool:
    """A unicast address of the public Internet.

    Stricter than `is_global`, which Python 3.11 gets wrong for some ranges (CVE-2024-4032
    and kin): multicast is refused, and an IPv6 address that carries an IPv4 one (6to4,
    NAT64, Teredo, IPv4-mapped) is public only if that IPv4 address is. 2002:7f00:1:: is
    127.0.0.1 through a 6to4 relay, and 64:ff9b::a00:1 is 10.0.0.1 through a NAT64 gateway.
    """
    if not a.is_global or a.is_multicast:
        return False
    if isinstance(a, ipaddress.IPv4Address):
        return True
    if any(a in n for n in _NOT_PUBLIC):
        return False
    embedded = a.ipv4_mapped or a.sixtofour or (a.teredo[1] if a.teredo else None)
    if embedded is None and a in _NAT64:
        embedded = ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    return embedded is None or is_public(embedded)


def allowed_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host` (an address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise httpx.ConnectError(f"cannot resolve {host}: {e}") from None
    # An IPv6 link-local address may carry its interface ("%eth0").
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def checked_address(host: str, port: int, allowed: list[IPNetwork]) -> str:
    """An address of `host` to connect to, once every address it resolves to is allowed."""
    addresses = resolve(host, port)
    for a in addresses:
        if not is_public(a) and not any(a in net for net in allowed):
            raise UrlNotAllowed(
                f"{host} is {a}, not a public address: images are downloaded from the "
                "Internet or from the networks in image_url_allowed_networks")
    return str(addresses[0])


class GuardedTransport(httpx.HTTPTransport):
    """An HTTP transport that connects only to allowed addresses (see the module)."""

    def __init__(self, allowed: list[IPNetwork]) -> None:
        super().__init__(trust_env=False)
        self._allowed = allowed

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        address = checked_address(host, port, self._allowed)
        if address != host:
            # The Host header keeps the name (httpx set it when the request was made), and
            # TLS still checks the certificate against the name.
            request.url = request.url.copy_with(host=address)
            request.extensions = {**request.extensions, "sni_hostname": host}
        return super().handle_request(request)
