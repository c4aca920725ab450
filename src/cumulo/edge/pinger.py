"""Echo requests from the edge's namespace to instances' private addresses: one raw ICMP
socket (made by a thread inside the namespace, so it sends and receives there, routed like
the TCP and UDP inner legs), and the replies matched to their requests by (address, id,
sequence number). The raw socket sees every ICMP packet of the namespace: anything that is
not the answer to one of our requests is ignored."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Iterator

from cumulo.edge import icmp_packets
from cumulo.edge.proxy import NetnsConnector

Key = tuple[str, int, int]  # (instance address, ICMP id, sequence number)


def _raw_icmp_socket(_: object = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    return sock


def read_echoes(sock: socket.socket, icmp_type: int) -> Iterator[icmp_packets.Echo]:
    """The echoes of `icmp_type` queued on a non-blocking raw ICMP socket (until none is)."""
    while True:
        try:
            packet = sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. an ICMP error queued on the socket: read on
            continue
        echo = icmp_packets.parse(packet, icmp_type)
        if echo is not None:
            yield echo


class Pinger:
    def __init__(self, connector: NetnsConnector) -> None:
        self._connector = connector
        self._sock: socket.socket | None = None
        self._ident = random.randrange(0x10000)  # another pinger's replies are not ours
        self._seq = 0
        self._waiting: dict[Key, asyncio.Future[None]] = {}

    async def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = await self._connector.call(_raw_icmp_socket, None)
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)
        return self._sock

    async def ping(self, ip: str, data: bytes, timeout: float) -> bool:
        """True when `ip` answered an echo request carrying `data` within `timeout`."""
        sock = await self._socket()
        self._seq = (self._seq + 1) & 0xFFFF
        key = (ip, self._ident, self._seq)
        answered = asyncio.get_running_loop().create_future()
        self._waiting[key] = answered
        try:
            sock.sendto(icmp_packets.echo_request(self._ident, self._seq, data), (ip, 0))
            await asyncio.wait_for(answered, timeout)
            return True
        except (TimeoutError, OSError):  # no answer; no route, or the send buffer full
            return False
        finally:
            self._waiting.pop(key, None)

    def _read(self) -> None:
        assert self._sock is not None
        for echo in read_echoes(self._sock, icmp_packets.ECHO_REPLY):
            waiting = self._waiting.get((echo.src, echo.ident, echo.seq))
            if waiting is not None and not waiting.done():
                waiting.set_result(None)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
