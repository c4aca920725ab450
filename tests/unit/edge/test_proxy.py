"""The edge's endpoints against a real namespace: the TCP forwarder's inner leg, and UDP
flows. For TCP, the "instance" is routed to one end of a veth pair with a permanent
neighbour entry (as cumulo sets for its guests): its packets leave and are dropped on the
other end, like those to a guest whose NIC has no address yet, until the test gives the
address to the namespace's loopback. The SYNs sent meanwhile are counted on the veth's TX."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from cumulo.agent.net import namespace
from cumulo.edge.proxy import Forwarder, NetnsConnector
from cumulo.edge.table import Forward
from cumulo.edge.udp import UdpRelay
from tests.conftest import free_port

TARGET = "10.99.0.5"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"cfwt-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-q", "-w",
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
             "net.ipv4.ip_nonlocal_bind=1"],
            check=True, capture_output=True,
        )  # fmt: skip
        for cmd in (
            "link set lo up", "link add d0 type veth peer name d1", "link set d1 up",
            "link set d0 up", "route add 10.99.0.0/24 dev d0",
            f"neigh replace {TARGET} lladdr 02:00:0a:63:00:05 dev d0 nud permanent",
        ):  # fmt: skip
            _ip("-n", name, *cmd.split())
        yield name
    finally:
        _ip("netns", "delete", name)


def _syns(ns: str) -> int:
    """Packets the namespace sent towards the (not yet reachable) instance."""
    link = json.loads(_ip("-n", ns, "-j", "-s", "link", "show", "d0"))[0]
    return int(link["stats64"]["tx"]["packets"])


async def _wait_syns(ns: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (count := _syns(ns)) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return count


@pytest_asyncio.fixture
async def endpoint(netns: str) -> AsyncIterator[Forward]:
    """A forwarder listening on a loopback address, forwarding to TARGET in the namespace."""
    public = f"127.77.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    f = Forward(public_ip=public, port=free_port(), private_ip=TARGET, cidrs=("127.0.0.0/8",))
    fwd = Forwarder(netns)
    assert await fwd.update((f,)) == []
    try:
        yield f
    finally:
        await fwd.close()


def _echo_server(ns: str, port: int, ready: threading.Event) -> None:
    """Listen on TARGET:port inside the namespace (before the address exists: nonlocal bind),
    answer one client's first message with its upper-case."""
    namespace.enter(ns)
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((TARGET, port))
        srv.listen(8)
        srv.settimeout(30)
        ready.set()
        conn, _ = srv.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())


async def test_inner_connect_is_retried_finely_until_the_instance_answers(
    netns: str, endpoint: Forward
) -> None:
    reader, writer = await asyncio.open_connection(endpoint.public_ip, endpoint.port)
    writer.write(b"hello")  # sent before the instance answers: must not be lost
    await writer.drain()
    # One connect alone: the kernel resends its SYN after 1 s, then 2 s more (3 packets
    # were seen in 2.5 s); a fresh SYN every 0.1 s makes many more.
    assert await _wait_syns(netns, 8, timeout=2.5) >= 8
    ready = threading.Event()
    server = threading.Thread(
        target=_echo_server, args=(netns, endpoint.port, ready), daemon=True
    )
    server.start()
    assert await asyncio.to_thread(ready.wait, 10)
    _ip("-n", netns, "addr", "add", f"{TARGET}/32", "dev", "lo")  # the instance is up
    assert await asyncio.wait_for(reader.read(100), 10) == b"HELLO"
    writer.close()
    await asyncio.to_thread(server.join, 10)


async def test_no_more_attempts_once_the_client_left(netns: str, endpoint: Forward) -> None:
    _, writer = await asyncio.open_connection(endpoint.public_ip, endpoint.port)
    assert await _wait_syns(netns, 1, timeout=5) >= 1
    writer.close()
    await asyncio.sleep(0.5)  # the forwarder notices at its next tick (0.1 s)
    before = _syns(netns)
    await asyncio.sleep(1.5)  # a SYN left pending would be resent by now (at 1 s)
    assert _syns(netns) == before


async def test_a_refusal_closes_the_client_at_once(netns: str, endpoint: Forward) -> None:
    _ip("-n", netns, "addr", "add", f"{TARGET}/32", "dev", "lo")  # up, nothing listening
    reader, writer = await asyncio.open_connection(endpoint.public_ip, endpoint.port)
    assert await asyncio.wait_for(reader.read(100), 10) == b""
    writer.close()


def _udp_echo(ns: str, port: int, ready: threading.Event, stop: threading.Event) -> None:
    """Answer each datagram on TARGET:port with its upper-case, until `stop`."""
    namespace.enter(ns)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind((TARGET, port))
        srv.settimeout(0.2)
        ready.set()
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(2048)
            except TimeoutError:
                continue
            srv.sendto(data.upper(), peer)


async def test_udp_flows_per_client_and_only_from_allowed_clients(netns: str) -> None:
    _ip("-n", netns, "addr", "add", f"{TARGET}/32", "dev", "lo")
    public = f"127.78.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    port = free_port()
    relay = UdpRelay(NetnsConnector(netns))
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=_udp_echo, args=(netns, port, ready, stop), daemon=True)
    server.start()
    assert await asyncio.to_thread(ready.wait, 10)
    loop = asyncio.get_running_loop()
    try:
        allowed = Forward(public, port, TARGET, ("127.0.0.0/8",), "udp")
        assert await relay.update((allowed,)) == []
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for i, c in enumerate(clients):
            c.setblocking(False)
            c.bind((f"127.0.0.{i + 1}", 0))
        for i, c in enumerate(clients):  # each client its own flow, answered to itself
            for n in range(3):
                await loop.sock_sendto(c, f"c{i}-{n}".encode(), (public, port))
                data = await asyncio.wait_for(loop.sock_recv(c, 100), 5)
                assert data == f"C{i}-{n}".encode()
        (ep,) = relay._endpoints.values()
        assert len(ep.flows) == 2
        # Only 127.0.0.1 allowed now: the other client's next datagram gets nothing.
        assert await relay.update((Forward(public, port, TARGET, ("127.0.0.1/32",),
                                           "udp"),)) == []
        fresh = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fresh.setblocking(False)
        fresh.bind(("127.0.0.2", 0))
        await loop.sock_sendto(fresh, b"denied", (public, port))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(fresh, 100), 1)
        # Another instance behind the address: the flows to the old one end.
        assert await relay.update((Forward(public, port, "10.99.0.6", ("127.0.0.0/8",),
                                           "udp"),)) == []
        assert ep.flows == {}
        for c in [*clients, fresh]:
            c.close()
    finally:
        stop.set()
        await relay.close()
        await asyncio.to_thread(server.join, 5)
