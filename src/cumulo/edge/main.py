"""The edge process: long-polls its table from the API and converges routes and listeners.

Everything it serves is rebuilt from the table: started anew (after a kill -9 too), its first
answer brings back every listener and route; each later change (a public address attached,
moved or released, an instance migrated, a rule changed) is applied as soon as the API's
notifier wakes the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx
import structlog

from cumulo.agent.host_lock import run_supervised
from cumulo.domain.netaddr import public_dns_address
from cumulo.edge import routes
from cumulo.edge.echo_gate import EchoGate
from cumulo.edge.pinger import Pinger
from cumulo.edge.proxy import Forwarder
from cumulo.edge.public_dns import PublicDns
from cumulo.edge.table import plan
from cumulo.edge.udp import UdpRelay
from cumulo.protocol import EdgeTable

log = structlog.get_logger("cumulo.edge")

POLL_WAIT_S = 30.0  # the API answers after its own cap (a few seconds) at most
RETRY_S = 1.0


@dataclass(frozen=True)
class EdgeConfig:
    api_url: str
    token: str
    netns: str  # the edge's namespace, plugged into the underlay
    public_pool: str | None = None  # its echo requests are served (None: left to the kernel)
    cloud_domain: str = "cumulo.internal"  # the public DNS's domain


class Edge:
    """`public_pool` given: ICMP echo (echo_gate.py) and public names (public_dns.py) are
    served too, the DNS on the pool's last usable address, port `dns_port`."""

    def __init__(self, netns: str, public_pool: str | None = None,
                 cloud_domain: str = "cumulo.internal", dns_port: int = 53) -> None:
        self.netns = netns
        self.tcp = Forwarder(netns)
        self.udp = UdpRelay(self.tcp.connector())
        self.pinger = Pinger(self.tcp.connector())
        self.echo = EchoGate(netns, public_pool, self.pinger) if public_pool else None
        self.dns = (PublicDns(public_dns_address(public_pool), cloud_domain, dns_port)
                    if public_pool else None)

    async def apply(self, table: EdgeTable) -> list[str]:
        """Routes first (a new listener's first flow finds its route), then listeners."""
        p = plan(table.entries)
        changed, errors = await routes.converge(self.netns, p.routes)
        errors += p.errors
        errors += await self.tcp.update(p.forwards)
        errors += await self.udp.update(p.forwards)
        if self.echo is not None:
            errors += await self.echo.update(p.echoes)
        if self.dns is not None:
            errors += await self.dns.update(p.names)
        log.info("edge_converged", version=table.version, routes=len(p.routes),
                 route_changes=changed, endpoints=len(p.forwards), errors=errors)
        return errors

    async def close(self) -> None:
        if self.echo is not None:
            await self.echo.close()
        if self.dns is not None:
            self.dns.close()
        self.pinger.close()
        await self.udp.close()
        await self.tcp.close()


async def run_edge(cfg: EdgeConfig, stop: asyncio.Event) -> None:
    edge = Edge(cfg.netns, cfg.public_pool, cfg.cloud_domain)
    since = -1
    async with httpx.AsyncClient(base_url=cfg.api_url,
                                 headers={"Authorization": f"Bearer {cfg.token}"},
                                 timeout=httpx.Timeout(10.0, read=POLL_WAIT_S + 15)) as http:
        try:
            while not stop.is_set():
                try:
                    r = await http.get("/v1/edge/table",
                                       params={"since": since, "wait": POLL_WAIT_S})
                    if r.status_code == 204:
                        continue
                    r.raise_for_status()
                    table = EdgeTable.model_validate_json(r.content)
                    await edge.apply(table)
                    since = table.version
                except Exception as e:  # the API away, a bad answer, a failed command
                    log.warning("edge_poll_failed", error=str(e))
                    since = -1  # fetch the whole table again
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), RETRY_S)
        finally:
            await edge.close()


async def _until_stopped(cfg: EdgeConfig, stop: asyncio.Event) -> None:
    """The poll is cancelled at once on `stop` (it may be waiting on the API)."""
    poll = asyncio.create_task(run_edge(cfg, stop))
    await stop.wait()
    poll.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poll


def main(cfg: EdgeConfig, parent_pid: int | None = None) -> int:
    """Run the edge until SIGTERM/SIGINT, or until `parent_pid` (`cumulo up`) dies."""
    run_supervised(lambda stop: _until_stopped(cfg, stop), parent_pid)
    return 0
