"""ICMP echo to public addresses: answered only when the instance answers.

A public address is a loopback address of the root namespace, so the kernel would answer
every ping to it, whether the instance runs or its rules allow ICMP. The edge keeps one
nftables table of its own in the root namespace (`ip cumulo_edge_<hash>`, one rule) that
drops the kernel's echo replies from the public pool, except those carrying the edge's
socket mark. The edge reads the echo requests to the pool on a raw ICMP socket of the root
namespace (raw sockets get a copy of every ICMP packet delivered), sends its own echo request
with the same data to the instance's private address from its namespace (pinger.py: routed
over the underlay and through the host's firewall like the TCP and UDP inner legs), and only
when the instance answered in time does it answer the client itself, from the public
address. A client whose address no ICMP rule of the instance allows gets no answer.

Why not NFQUEUE (hold the request until the instance answers): this machine's kernel has no
nft `queue` expression (CONFIG_NFT_QUEUE unset), and iptables' NFQUEUE target would mean
rules in the machine's shared `filter` table.

The table stays when the edge stops or dies: while no edge runs, pings to public addresses go
unanswered, which is the truth. Nothing else of the machine is touched: the rule matches
echo replies from the pool's addresses only, and `cumulo down` deletes the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket

import structlog

from cumulo.agent.net.cmd import NetError, run
from cumulo.edge import icmp_packets
from cumulo.edge.pinger import Pinger, read_echoes
from cumulo.edge.table import EchoTarget

log = structlog.get_logger("cumulo.edge")

ANSWER_WITHIN_S = 2.0  # an instance's own answer; a TCG guest answers in milliseconds
MAX_PENDING = 256  # echo requests awaiting their instance's answer; more get none
MARK = 0x63756D6F  # "cumo": the edge's own echo replies pass the table's rule
SO_MARK = getattr(socket, "SO_MARK", 36)


def table_name(netns: str) -> str:
    """The edge's table in the root namespace (one per cloud: named after its namespace)."""
    return "cumulo_edge_" + hashlib.sha256(netns.encode()).hexdigest()[:10]


def ruleset(table: str, pool: str) -> str:
    """The nft script (pure): replace the table atomically."""
    net = ipaddress.IPv4Network(pool)  # validated: it is interpolated
    return "\n".join([
        f"table ip {table}",
        f"delete table ip {table}",
        f"table ip {table} {{",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
        f"\t\tip saddr {net} icmp type echo-reply meta mark != {MARK:#x} drop",
        "\t}",
        "}",
        "",
    ])  # fmt: skip


async def remove_table(netns: str) -> None:
    """Delete the edge's table of the root namespace, if any (`cumulo down`)."""
    table = table_name(netns)
    code, _ = await run("nft", "list", "table", "ip", table, check=False)
    if code == 0:
        await run("nft", "delete", "table", "ip", table)


def _raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)  # replies from the public address
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    sock.setblocking(False)
    return sock


class EchoGate:
    def __init__(self, netns: str, pool: str, pinger: Pinger) -> None:
        self.netns = netns
        self.pool = ipaddress.IPv4Network(pool)
        self._pinger = pinger
        self._targets: dict[str, EchoTarget] = {}
        self._sock: socket.socket | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def update(self, targets: tuple[EchoTarget, ...]) -> list[str]:
        """The addresses whose echo requests may be answered (and by which instance); the
        table and the socket are set up at the first call (retried at each next one)."""
        self._targets = {t.public_ip: t for t in targets}
        if self._sock is not None:
            return []
        try:
            # the root namespace: the edge's event loop thread never leaves it
            sock = _raw_socket()
        except OSError as e:
            return [f"ICMP to public addresses is not served: {e}"]
        try:
            await run("nft", "-f", "-", stdin=ruleset(table_name(self.netns), str(self.pool)))
        except NetError as e:
            sock.close()
            return [f"ICMP to public addresses is not served: {e}"]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        self._sock = sock
        return []

    def _read(self) -> None:
        assert self._sock is not None
        for echo in read_echoes(self._sock, icmp_packets.ECHO_REQUEST):
            if ipaddress.IPv4Address(echo.dst) not in self.pool:
                continue  # every ICMP packet of the machine comes by: only ours are served
            target = self._targets.get(echo.dst)
            if target is None or not target.allows(echo.src) or len(self._pending) >= MAX_PENDING:
                continue
            task = asyncio.get_running_loop().create_task(self._answer(target, echo))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _answer(self, target: EchoTarget, echo: icmp_packets.Echo) -> None:
        if not await self._pinger.ping(target.private_ip, echo.data, ANSWER_WITHIN_S):
            return
        if self._sock is not None:
            reply = icmp_packets.echo_reply_packet(echo.dst, echo.src, echo.ident, echo.seq,
                                                   echo.data)
            try:
                self._sock.sendto(reply, (echo.src, 0))
            except OSError as e:
                log.info("echo_reply_failed", client=echo.src, error=str(e))

    async def close(self) -> None:
        """Stop answering (the table stays: no edge, no answer; `cumulo down` removes it)."""
        for t in list(self._pending):
            t.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
