"""Public endpoints in all-in-one mode: TCP listeners on loopback addresses of the ROOT
namespace that forward into instances, without the root namespace ever routing to a VM network.

Listening sockets are ordinary asyncio servers (root namespace, e.g. 127.100.0.5:22). The
sockets towards the instances are created by worker threads that did `setns` into the host
namespace once (ThreadPoolExecutor initializer): a socket belongs to the namespace of the
thread that created it, for its whole life, so the event loop can then use it like any other.
Each endpoint only accepts clients whose address matches one of its rules' CIDRs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from cumulo.agent.net import namespace
from cumulo.agent.net.plan import Forward

log = structlog.get_logger("cumulo.agent.net")

A = TypeVar("A")
T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
CHUNK = 64 * 1024


class NetnsConnector:
    """Opens TCP connections from inside a network namespace."""

    def __init__(self, netns: str, workers: int = 4) -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"netns-{netns}",
            initializer=namespace.enter,
            initargs=(netns,),
        )

    def _connect(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect((host, port))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    async def connect(self, host: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._connect, host, port)

    async def call(self, fn: Callable[[A], T], arg: A) -> T:
        """Run `fn(arg)` in a thread that is inside the namespace."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, arg)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class _Endpoint:
    def __init__(self, forward: Forward, connector: NetnsConnector) -> None:
        self.forward = forward
        self.connector = connector
        self.server: asyncio.Server | None = None
        self.conns: set[asyncio.Task[None]] = set()

    def allowed(self, client_ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(c) for c in self.forward.cidrs)

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._accept, self.forward.public_ip, self.forward.port, reuse_address=True
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.conns.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self.conns.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        f = self.forward
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        if not self.allowed(client):
            log.info("forward_refused", endpoint=f"{f.public_ip}:{f.port}", client=client)
            writer.close()
            return
        try:
            sock = await self.connector.connect(f.private_ip, f.port)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except OSError as e:
            log.info("forward_connect_failed", target=f"{f.private_ip}:{f.port}", error=str(e))
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.conns):
            t.cancel()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


class Forwarder:
    """The set of public endpoints of one host (converged with `update`)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._connector: NetnsConnector | None = None
        self._endpoints: dict[tuple[str, int], _Endpoint] = {}

    @property
    def listening(self) -> list[tuple[str, int]]:
        return sorted(self._endpoints)

    async def update(self, forwards: tuple[Forward, ...]) -> list[str]:
        """Converge the listeners; returns one error message per endpoint that failed."""
        wanted = {(f.public_ip, f.port): f for f in forwards}
        for key in [k for k in self._endpoints if k not in wanted]:
            await self._endpoints.pop(key).stop()
        errors: list[str] = []
        for key, f in wanted.items():
            ep = self._endpoints.get(key)
            if ep is not None:
                ep.forward = f  # new target / CIDRs apply to new connections
                continue
            if self._connector is None:
                self._connector = NetnsConnector(self.netns)
            ep = _Endpoint(f, self._connector)
            try:
                await ep.start()
            except OSError as e:
                errors.append(f"cannot listen on {f.public_ip}:{f.port}: {e}")
                continue
            self._endpoints[key] = ep
        return errors

    def connector(self) -> NetnsConnector:
        if self._connector is None:
            self._connector = NetnsConnector(self.netns)
        return self._connector

    async def close(self) -> None:
        await self.update(())
        if self._connector is not None:
            self._connector.close()
            self._connector = None
