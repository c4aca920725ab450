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
        if not a.is_global and not any(a in net for net in allowed):
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
