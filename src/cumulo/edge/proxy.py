"""The edge's TCP endpoints: listeners on loopback addresses of the ROOT namespace that
forward into instances, without the root namespace ever routing to a VM network.

Listening sockets are ordinary asyncio servers (root namespace, e.g. 127.100.0.5:22). The
sockets towards the instances are created by worker threads that did `setns` into the edge's
namespace once (ThreadPoolExecutor initializer): a socket belongs to the namespace of the
thread that created it, for its whole life, so the event loop can then use it like any other.
Each endpoint only accepts clients whose address matches one of its rules' CIDRs.

A flow is two sockets joined by the edge: the client's leg stays whatever happens to the
instance; the inner leg is a TCP connection from the edge's namespace to the private address,
routed by the kernel, so when the instance moves to another host only its route changes and
the connection goes on (its retransmissions find the new host). A public address given to
another instance closes the flows to the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import TypeVar

import structlog

from cumulo.agent.net import namespace
from cumulo.edge.table import Forward

log = structlog.get_logger("cumulo.edge")

A = TypeVar("A")
T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
# A new SYN towards the instance every RETRY_EVERY_S while none is answered. A SYN that reaches
# a guest whose NIC has no address yet is dropped, and the kernel would resend it only after
# 1 s, then 3 s: measured (tcpdump in the host namespace, x86_64 under TCG), the first SSH
# login through the forwarder came 0.6-1 s after the guest's DHCP lease. Each attempt is a
# socket of its own and lives ATTEMPT_LIFETIME_S (long enough for a slow guest's SYN-ACK).
RETRY_EVERY_S = 0.1
ATTEMPT_LIFETIME_S = 2.0
CHUNK = 64 * 1024
EARLY_DATA_LIMIT = 256 * 1024  # what a client may send before its instance answers


def _stream_socket(_: object = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _attempt(sock: socket.socket, addr: tuple[str, int]) -> socket.socket:
    """One TCP connect on a non-blocking socket; the socket is closed unless it connected."""
    try:
        await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


class NetnsConnector:
    """Opens TCP connections from inside a network namespace."""

    def __init__(self, netns: str, workers: int = 4) -> None:
        self.netns = netns
        self._threads = namespace.Threads(netns, workers)

    async def connect(
        self,
        host: str,
        port: int,
        *,
        timeout: float = CONNECT_TIMEOUT_S,
        every: float = RETRY_EVERY_S,
        gave_up: Callable[[], bool] = lambda: False,
    ) -> socket.socket:
        """A connected socket to host:port, made in the namespace (by a worker thread; the
        connects themselves run in the event loop). Unanswered, a new attempt starts every
        `every` seconds until one connects, `timeout` passes (TimeoutError) or `gave_up()`
        (ConnectionAbortedError). A refusal is an answer: raised at once, like a direct
        connection's."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        pending: dict[asyncio.Task[socket.socket], float] = {}
        try:
            while True:
                if gave_up():
                    raise ConnectionAbortedError(f"client left before {host}:{port} answered")
                now = loop.time()
                if now >= end:
                    raise TimeoutError(f"{host}:{port} did not answer within {timeout:.0f} s")
                for t in [t for t, born in pending.items() if now - born > ATTEMPT_LIFETIME_S]:
                    t.cancel()
                    del pending[t]
                sock = await self.call(_stream_socket, None)
                pending[asyncio.create_task(_attempt(sock, (host, port)))] = now
                done, _ = await asyncio.wait(
                    pending, timeout=max(0.0, min(every, end - loop.time())),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                winner: socket.socket | None = None
                refused: BaseException | None = None
                for t in done:
                    del pending[t]
                    exc = t.exception()
                    if exc is None:
                        if winner is None:
                            winner = t.result()
                        else:
                            t.result().close()
                    elif isinstance(exc, ConnectionRefusedError):
                        refused = exc
                if winner is not None:
                    return winner
                if refused is not None:
                    raise refused
                # anything else (unreachable, reset): try again at the next tick
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for t in pending:
                if not t.cancelled() and t.exception() is None:
                    t.result().close()  # connected while we were leaving

    async def call(self, fn: Callable[[A], T], arg: A) -> T:
        """Run `fn(arg)` in a thread that is inside the namespace."""
        return await self._threads.call(fn, arg)

    def close(self) -> None:
        self._threads.close()


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
        # Read what the client sends while the instance is not answering yet (an SSH client
        # sends its banner at once), so that a client that leaves is noticed: its instance
        # then gets no connection (under TCG a dropbear started for nobody costs the guest).
        early: list[bytes] = []
        left = asyncio.Event()

        async def read_ahead() -> None:
            size = 0
            while size < EARLY_DATA_LIMIT:
                data = await reader.read(CHUNK)
                if not data:
                    left.set()
                    return
                early.append(data)
                size += len(data)

        watcher = asyncio.create_task(read_ahead())
        try:
            sock = await self.connector.connect(f.private_ip, f.port, gave_up=left.is_set)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except OSError as e:  # TimeoutError and ConnectionAbortedError (client left) too
            log.info("forward_connect_failed", target=f"{f.private_ip}:{f.port}", error=str(e))
            writer.close()
            return
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
            if not watcher.cancelled():
                watcher.exception()  # a client reset: _pump meets it again, or nobody cares
        for data in early:
            up_writer.write(data)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    def drop_flows(self) -> None:
        for t in list(self.conns):
            t.cancel()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.drop_flows()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


class Forwarder:
    """The edge's set of TCP endpoints (converged with `update`)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._connector: NetnsConnector | None = None
        self._endpoints: dict[tuple[str, int], _Endpoint] = {}

    @property
    def listening(self) -> list[tuple[str, int]]:
        return sorted(self._endpoints)

    async def update(self, forwards: tuple[Forward, ...]) -> list[str]:
        """Converge the listeners; returns one error message per endpoint that failed."""
        wanted = {(f.public_ip, f.port): f for f in forwards if f.proto == "tcp"}
        for key in [k for k in self._endpoints if k not in wanted]:
            await self._endpoints.pop(key).stop()
        errors: list[str] = []
        for key, f in wanted.items():
            ep = self._endpoints.get(key)
            if ep is not None:
                if ep.forward.private_ip != f.private_ip:
                    # The address now names another instance: the old one's flows end.
                    ep.drop_flows()
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
