"""One dnsmasq per network, inside the host namespace: DHCP (static leases of this host's
instances only) and DNS for the network's domain (every instance record's fqdn and hostname,
wherever it runs: the same answers from every host; nothing is forwarded).

Files live in `<dir>/<network id>/`. Leases and names change through `hosts` (dhcp-hostsfile)
and `addn-hosts`, picked up on SIGHUP; a change of dnsmasq.conf (bridge, gateway, CIDR, domain)
restarts the process. A dnsmasq is found again by its pidfile + its command line (which names
its conf file), so a fresh process can reload or stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cumulo.agent.net.cmd import NetError, run
from cumulo.agent.net.plan import Net

LEASE_TIME = "12h"


@dataclass(frozen=True)
class DnsmasqPaths:
    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        return self.dir / "dhcp-hosts"

    @property
    def addn_hosts(self) -> Path:
        return self.dir / "addn-hosts"

    @property
    def pidfile(self) -> Path:
        return self.dir / "dnsmasq.pid"

    @property
    def leases(self) -> Path:
        return self.dir / "leases"

    @property
    def log(self) -> Path:
        return self.dir / "dnsmasq.log"


def render_conf(net: Net, paths: DnsmasqPaths) -> str:
    return "\n".join(
        [
            f"# cumulo network {net.id} ({net.cidr}) on {net.bridge}",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "bind-interfaces",
            f"interface={net.bridge}",
            "except-interface=lo",
            "user=root",  # dhcp-hosts / addn-hosts are re-read on SIGHUP from a 0700 host dir
            "group=root",
            f"pid-file={paths.pidfile}",
            f"dhcp-leasefile={paths.leases}",
            f"log-facility={paths.log}",
            f"domain={net.domain}",
            f"local=/{net.domain}/",
            "domain-needed",
            "bogus-priv",
            f"dhcp-range={net.network_addr},static,{net.netmask},{LEASE_TIME}",
            f"dhcp-hostsfile={paths.hosts}",
            f"addn-hosts={paths.addn_hosts}",
            f"dhcp-option=option:router,{net.gateway}",
            f"dhcp-option=option:dns-server,{net.gateway}",
            f"dhcp-option=option:domain-search,{net.domain}",
            # Static leases only, and silence for any other MAC: on a network spanning
            # hosts, the others' instances are answered by their own host (a NAK from here
            # would take their address away).
            "dhcp-ignore=tag:!known",
            "dhcp-authoritative",
            "dhcp-rapid-commit",
            # Forced: busybox's udhcpc does not ask for the MTU, and a guest sending 1500-byte
            # frames into a VXLAN segment would see its bulk TCP stall.
            *([f"dhcp-option-force=option:mtu,{net.mtu}"] if net.mtu else []),
            "",
        ]
    )


def render_hosts(net: Net) -> str:
    """dhcp-hostsfile: mac,ip,hostname (static leases) of this host's instances."""
    return "".join(f"{h.mac},{h.ip},{h.hostname}\n" for h in net.dhcp_hosts)


def render_addn_hosts(net: Net) -> str:
    """addn-hosts: ip fqdn hostname."""
    return "".join(f"{h.ip} {h.fqdn} {h.hostname}\n" for h in net.hosts)


def _write(path: Path, text: str) -> bool:
    """Write if different (atomically); whether it changed."""
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def prune_leases(text: str, net: Net) -> str:
    """The lease lines still matching a reservation (mac + ip). A lease kept for a deleted
    instance would make dnsmasq refuse its address to the next instance that gets it."""
    valid = {(h.mac.lower(), h.ip) for h in net.hosts}
    kept = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and (fields[1].lower(), fields[2]) in valid:
            kept.append(line + "\n")
    return "".join(kept)


def live_pid(paths: DnsmasqPaths) -> int | None:
    try:
        pid = int(paths.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if f"--conf-file={paths.conf}".encode() in cmdline.split(b"\0") else None


async def ensure(netns: str, net: Net, paths: DnsmasqPaths) -> None:
    """dnsmasq for `net` runs with the current files (start, SIGHUP or restart as needed)."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    conf_changed = _write(paths.conf, render_conf(net, paths))
    data_changed = _write(paths.hosts, render_hosts(net))
    data_changed = _write(paths.addn_hosts, render_addn_hosts(net)) or data_changed
    pid = live_pid(paths)
    leases = ""
    with contextlib.suppress(OSError):
        leases = paths.leases.read_text()
    stale = prune_leases(leases, net) != leases
    if pid is not None and (conf_changed or stale):
        # dnsmasq keeps leases in memory: stale ones go only with a restart
        await stop(paths)
        pid = None
    if stale:
        _write(paths.leases, prune_leases(leases, net))
    if pid is None:
        await run(
            "ip", "netns", "exec", netns, "dnsmasq", f"--conf-file={paths.conf}",
        )  # fmt: skip
        if live_pid(paths) is None:
            raise NetError(f"dnsmasq for {net.id} did not start (see {paths.log})")
    elif data_changed:
        os.kill(pid, signal.SIGHUP)


async def stop(paths: DnsmasqPaths, timeout: float = 5.0) -> None:
    pid = live_pid(paths)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live_pid(paths) == pid and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if live_pid(paths) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    paths.pidfile.unlink(missing_ok=True)
