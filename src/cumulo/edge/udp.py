"""The edge's UDP endpoints: a datagram listener per allowed UDP port on the public loopback
address (root namespace), and per client address a flow: a UDP socket of the edge's
namespace connected to the instance's private address:port. What the client sends goes out
of its flow's socket; what the instance answers comes back to the client from the public
address. A flow idle for FLOW_IDLE_S is closed; a public address given to another instance
closes the flows to the old one. Clients are matched against the rules' CIDRs, as for TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from typing import cast

import structlog

from cumulo.edge.proxy import NetnsConnector
from cumulo.edge.table import Forward

log = structlog.get_logger("cumulo.edge")

FLOW_IDLE_S = 60.0
MAX_FLOWS = 1024  # per endpoint: the oldest idle one makes room
Addr = tuple[str, int]


def _dgram_socket(_: object = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


class _Back(asyncio.DatagramProtocol):
    """The inner leg of one flow: what the instance sends goes to the client."""

    def __init__(self, endpoint: _Endpoint, client: Addr) -> None:
        self.endpoint = endpoint
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.last = time.monotonic()
        self.endpoint.reply(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable from the instance: UDP says nothing back


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, forward: Forward, connector: NetnsConnector) -> None:
        self.forward = forward
        self.connector = connector
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Addr, _Back] = {}
        self.opening: dict[Addr, list[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def allowed(self, client_ip: str) -> bool:
        addr = ipaddress.ip_address(client_ip)
        return any(addr in ipaddress.ip_network(c) for c in self.forward.cidrs)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        client = (str(addr[0]), int(addr[1]))
        flow = self.flows.get(client)
        if flow is not None and flow.transport is not None:
            flow.last = time.monotonic()
            flow.transport.sendto(data)
            return
        if client in self.opening:
            self.opening[client].append(data)
            return
        if not self.allowed(client[0]):
            log.info("udp_refused", endpoint=f"{self.forward.public_ip}:{self.forward.port}",
                     client=client[0])
            return
        self.opening[client] = [data]
        task = asyncio.create_task(self._open(client))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, client: Addr) -> None:
        f = self.forward
        try:
            sock = await self.connector.call(_dgram_socket, None)
            sock.connect((f.private_ip, f.port))
            loop = asyncio.get_running_loop()
            _, back = await loop.create_datagram_endpoint(lambda: _Back(self, client), sock=sock)
        except OSError as e:
            log.info("udp_flow_failed", target=f"{f.private_ip}:{f.port}", error=str(e))
            self.opening.pop(client, None)
            return
        if len(self.flows) >= MAX_FLOWS:
            oldest = min(self.flows, key=lambda c: self.flows[c].last)
            self._close_flow(oldest)
        self.flows[client] = back
        for data in self.opening.pop(client, []):
            if back.transport is not None:
                back.transport.sendto(data)

    def reply(self, data: bytes, client: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, client)

    def _close_flow(self, client: Addr) -> None:
        flow = self.flows.pop(client, None)
        if flow is not None and flow.transport is not None:
            flow.transport.close()

    def expire(self, now: float) -> None:
        for client in [c for c, f in self.flows.items() if now - f.last > FLOW_IDLE_S]:
            self._close_flow(client)

    def drop_flows(self) -> None:
        for client in list(self.flows):
            self._close_flow(client)

    def stop(self) -> None:
        self.drop_flows()
        for t in list(self.tasks):
            t.cancel()
        if self.transport is not None:
            self.transport.close()


class UdpRelay:
    """The edge's set of UDP endpoints (converged with `update`)."""

    def __init__(self, connector: NetnsConnector) -> None:
        self._connector = connector
        self._endpoints: dict[Addr, _Endpoint] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def listening(self) -> list[Addr]:
        return sorted(self._endpoints)

    async def update(self, forwards: tuple[Forward, ...]) -> list[str]:
        wanted = {(f.public_ip, f.port): f for f in forwards if f.proto == "udp"}
        for key in [k for k in self._endpoints if k not in wanted]:
            self._endpoints.pop(key).stop()
        errors: list[str] = []
        loop = asyncio.get_running_loop()
        for key, f in wanted.items():
            ep = self._endpoints.get(key)
            if ep is not None:
                if ep.forward.private_ip != f.private_ip:
                    ep.drop_flows()
                ep.forward = f
                continue
            ep = _Endpoint(f, self._connector)
            try:
                await loop.create_datagram_endpoint(lambda ep=ep: ep,  # type: ignore[misc]
                                                    local_addr=key, reuse_port=False)
            except OSError as e:
                errors.append(f"cannot listen on {f.public_ip}:{f.port}/udp: {e}")
                continue
            self._endpoints[key] = ep
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        return errors

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(FLOW_IDLE_S / 4)
            now = time.monotonic()
            for ep in self._endpoints.values():
                ep.expire(now)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for ep in self._endpoints.values():
            ep.stop()
        self._endpoints.clear()
