"""HostNetwork: converge one host's data plane to the assignments (the agent's only entry point).

Layout, all inside the host namespace `names.netns_name(host_dir)`:
  bridge per network (gateway address) + dnsmasq per network (DHCP/DNS)
  VXLAN device per network on its bridge, to the other hosts serving it (with an underlay)
  tap per instance NIC (created by QEMU, which runs in the namespace), attached to its bridge,
  tap per bare-metal port cabled here (opened by the node's BMC emulator), the same way,
  and detached from any bridge while its node is not active (no port assigned),
  tc caps on the tap (+ its IFB), one nft transaction for every firewall rule of the host.
Public addresses are not the host's: the edge (cumulo.edge) serves them and reaches the
instances over the underlay; this host's firewall lets in from the underlay only the edge's
traffic, to what the instances' security groups allow (see firewall.py).

The reconciler calls `converge` after each pass (after driver.start, so new taps exist, and
after destroy, so removed instances lose their rules); it is cheap when nothing changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

import structlog

from cumulo.agent.drivers.base import NicSpec
from cumulo.agent.net import bridge, dnsmasq, firewall, names, namespace, plan, shaping, vxlan
from cumulo.agent.net.cmd import NetError, run
from cumulo.protocol import Assignment, NetworkRef, PortAssignment

log = structlog.get_logger("cumulo.agent.net")


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _ifindexes(taps: list[str]) -> dict[str, int]:
    return {t: _ifindex(t) for t in taps}


class HostNetwork:
    def __init__(self, host_dir: Path, underlay_ip: str | None = None,
                 edge_ip: str | None = None) -> None:
        self.host_dir = Path(host_dir).absolute()
        self.underlay_ip = underlay_ip  # None: networks stay on this host (no VXLAN)
        self.edge_ip = edge_ip  # the edge's underlay address (None: no public addresses here)
        self._netns = names.netns_name(self.host_dir)
        self.state_dir = self.host_dir / "net"
        self._threads: namespace.Threads | None = None
        self._applied: str | None = None
        self._lock = asyncio.Lock()

    @property
    def netns(self) -> str:
        return self._netns

    def _in_netns(self) -> namespace.Threads:
        if self._threads is None:
            self._threads = namespace.Threads(self._netns, workers=1)
        return self._threads

    def _forget_threads(self) -> None:
        if self._threads is not None:
            self._threads.close()  # they live in the old namespace
            self._threads = None

    def nic_specs(self, a: Assignment) -> tuple[NicSpec, ...]:
        return tuple(
            NicSpec(tap=names.tap_name(a.id, i), mac=nic.mac.lower())
            for i, nic in enumerate(a.nics)
        )

    def _dnsmasq_paths(self, network_id: str) -> dnsmasq.DnsmasqPaths:
        if not network_id or "/" in network_id or network_id.startswith("."):
            raise NetError(f"invalid network id {network_id!r}")
        return dnsmasq.DnsmasqPaths(self.state_dir / "dnsmasq" / network_id)

    async def converge(
        self, networks: list[NetworkRef], instances: list[Assignment], running: set[str],
        ports: Sequence[PortAssignment] = (),
    ) -> None:
        """Make the data plane match; idempotent, and a no-op when nothing changed.
        `ports`: bare-metal NICs cabled to this host (plugged as running VMs' NICs)."""
        p = plan.build(networks, instances, running, self.underlay_ip, self.edge_ip, ports)
        async with self._lock:
            if not namespace.exists(self._netns):
                self._applied = None
                self._forget_threads()
                await namespace.ensure(self._netns)
            taps = await self._tap_indexes(p)
            fingerprint = hashlib.sha256(repr((p, sorted(taps.items()))).encode()).hexdigest()
            if fingerprint == self._applied and self._dnsmasq_alive(p):
                return
            await self._apply(p, taps)
            self._applied = fingerprint

    async def _tap_indexes(self, p: plan.NetPlan) -> dict[str, int]:
        if not p.nics:
            return {}
        return await self._in_netns().call(_ifindexes, [n.tap for n in p.nics])

    def _dnsmasq_alive(self, p: plan.NetPlan) -> bool:
        return all(dnsmasq.live_pid(self._dnsmasq_paths(n.id)) is not None for n in p.nets)

    async def _apply(self, p: plan.NetPlan, taps: dict[str, int]) -> None:
        ns = self._netns
        await namespace.ensure(ns)
        present = {n.tap for n in p.nics if taps.get(n.tap)}
        await bridge.converge(ns, p.nets, p.nics)
        await vxlan.converge(ns, tuple(n.segment for n in p.nets if n.segment is not None))
        for net in p.nets:
            await dnsmasq.ensure(ns, net, self._dnsmasq_paths(net.id))
        await self._stop_stale_dnsmasq({n.id for n in p.nets})
        links = await bridge.links(ns)
        ifbs = {n for n, link in links.items() if link.kind == "ifb" and names.is_cumulo_ifb(n)}
        caps = {n.tap: n.mbps for n in p.nics if n.tap in present}
        await shaping.apply(ns, caps, ifbs)
        await firewall.apply(ns, firewall.render(p.nets, p.nics, p.edge_ip))
        # The edge's traffic is routed in from the underlay (the firewall says what may pass).
        await run("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                  f"net.ipv4.ip_forward={1 if p.edge_ip else 0}")
        log.info("network_converged", netns=ns, networks=len(p.nets), nics=len(present))

    async def _stop_stale_dnsmasq(self, wanted: set[str]) -> None:
        base = self.state_dir / "dnsmasq"
        if not base.is_dir():
            return
        for d in base.iterdir():
            if d.is_dir() and d.name not in wanted:
                await dnsmasq.stop(dnsmasq.DnsmasqPaths(d))
                shutil.rmtree(d, ignore_errors=True)

    async def teardown(self) -> None:
        """Remove everything this host's data plane made (works from a fresh process too)."""
        async with self._lock:
            self._forget_threads()
            await self._stop_stale_dnsmasq(set())
            await namespace.delete(self._netns)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._applied = None
