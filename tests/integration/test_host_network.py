"""The host data plane with real tiny VMs (TCG): DHCP + DNS, public SSH through the edge's
loopback endpoint (by address, and by FQDN from the edge's DNS), UDP and ICMP through the
edge, isolation between projects, live firewall changes, bandwidth caps, teardown.

Three VMs share one module (booting costs seconds): a1 + a2 on project p1's network (a1 has a
public loopback IP and a bandwidth cap), b1 alone on project p2's network. The host and an
edge (cumulo.edge, run in this process from a table the test writes) are plugged into an
underlay of their own, as `cumulo up` plugs them.
Commands run in guests over SSH executed INSIDE the host namespace (`ip netns exec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from cumulo.agent.drivers.base import VMSpec
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.net import dnsmasq, names, namespace
from cumulo.agent.net.host_network import HostNetwork
from cumulo.agent.storage.seed import build_seed_iso
from cumulo.allinone import fabric
from cumulo.domain.arch import Arch
from cumulo.domain.netaddr import public_dns_address
from cumulo.edge import echo_gate
from cumulo.edge.main import Edge
from cumulo.protocol import (
    Assignment,
    DnsRecord,
    EdgeEntry,
    EdgeTable,
    FirewallRule,
    ImageFile,
    ImageRef,
    NetworkRef,
    NicRef,
)

pytestmark = [pytest.mark.qemu, pytest.mark.asyncio(loop_scope="module")]

ZONE = "local-1a.cumulo.test"
CAP_MBPS = 8
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes",
]  # fmt: skip
BASE = [FirewallRule(proto="tcp", port=22), FirewallRule(proto="icmp")]
HOST_UNDERLAY = ipaddress.IPv4Interface("10.251.0.1/24")
EDGE_UNDERLAY = ipaddress.IPv4Interface("10.251.0.254/24")


@dataclass
class Env:
    dir: Path
    hn: HostNetwork
    edge: Edge
    driver: QemuDriver
    key: Path
    public_ip: str
    networks: list[NetworkRef]
    vms: dict[str, Assignment]
    ips: dict[str, str] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return self.hn.netns

    async def converge_host(self) -> None:
        running = {a.id for a in self.vms.values()}
        await self.hn.converge(self.networks, list(self.vms.values()), running)

    async def converge(self) -> None:
        """The host's data plane, then the edge's table (as the API would give it)."""
        await self.converge_host()
        entries = [EdgeEntry(public_ip=a.public_ip, instance_id=a.id, private_ip=a.nics[0].ip,
                             host_ip=str(HOST_UNDERLAY.ip), rules=a.ingress, fqdn=a.fqdn)
                   for a in self.vms.values() if a.public_ip]
        assert await self.edge.apply(EdgeTable(version=0, entries=entries)) == []

    async def ssh(self, vm: str, command: str, stdin: bytes = b"", timeout: float = 60,
                  check: bool = True) -> tuple[int, str]:  # fmt: skip
        argv = ["ip", "netns", "exec", self.ns, "ssh", "-i", str(self.key), *SSH_OPTS,
                f"root@{self.ips[vm]}", command]  # fmt: skip
        return await sh(argv, stdin=stdin, timeout=timeout, check=check)


async def sh(argv: list[str], stdin: bytes = b"", timeout: float = 60,
             check: bool = True) -> tuple[int, str]:  # fmt: skip
    """Run a command without blocking the event loop (the edge runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"timeout after {timeout}s: {' '.join(argv)}") from None
    code = proc.returncode if proc.returncode is not None else -1
    text = out.decode(errors="replace")
    if check and code != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({code}): {text[-2000:]}")
    return code, text


def _network(n: int, project: str) -> NetworkRef:
    return NetworkRef(
        id=f"net-{n:017x}", project=project, cidr=f"10.231.{n}.0/24", gateway=f"10.231.{n}.1",
        dns_domain=f"{project}.{ZONE}",
    )  # fmt: skip


def _assignment(vm_id: str, name: str, net: NetworkRef, ip: str, mac: str,
                **kw: object) -> Assignment:  # fmt: skip
    return Assignment(
        id=vm_id, hostname=name, project=net.project, arch="x86_64", vcpus=1, ram_mib=128,
        disk_gib=1, state="running", desired_power="running", generation=1, reboot_seq=0,
        reboot_done_seq=0,
        # Not used to find files: this test boots the built-in image's own (no agent cache).
        image=ImageRef(id="img-0000000000000000a", boot="kernel",
                       disk=ImageFile(sha256="0" * 64, size=0)),
        fqdn=f"{name}.{net.dns_domain}", nics=[NicRef(network_id=net.id, mac=mac, ip=ip)],
        ingress=list(BASE), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _public_pool() -> str:
    """This process's slice of loopback addresses (its edge serves ICMP to all of them)."""
    return f"127.100.{os.getpid() % 250}.0/24"


def _free_public_ip(after: int = 0) -> str:
    """A loopback address of the pool nobody listens on port 22 of."""
    for i in range(after + 1, 250):
        ip = str(ipaddress.IPv4Network(_public_pool())[i])
        with socket.socket() as s:
            if s.connect_ex((ip, 22)) != 0:
                return ip
    raise AssertionError("no free loopback address")


async def _wait_ssh(env: Env, vm: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        code, out = await env.ssh(vm, "true", timeout=15, check=False)
        if code == 0:
            return
        await asyncio.sleep(0.3)
    console = await env.driver.console_log(env.vms[vm].id, 4000)
    raise AssertionError(f"no SSH to {vm}: {out}\nconsole:\n{console}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    for tool in ("ip", "nft", "tc", "dnsmasq", "ssh", "ssh-keygen", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    from cumulo.images.tiny import ensure_tiny_image

    image = ensure_tiny_image(Arch.X86_64)
    d = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
    key = d / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (d / "id.pub").read_text().strip()
    net_a, net_b = _network(1, "p1"), _network(2, "p2")
    public_ip = _free_public_ip()
    vms = {
        "a1": _assignment("i-00000000000000a01", "a1", net_a, "10.231.1.11",
                          "52:54:00:31:01:11", public_ip=public_ip, bandwidth_mbps=CAP_MBPS),
        "a2": _assignment("i-00000000000000a02", "a2", net_a, "10.231.1.12",
                          "52:54:00:31:01:12"),
        "b1": _assignment("i-00000000000000b01", "b1", net_b, "10.231.2.11",
                          "52:54:00:31:02:11"),
    }  # fmt: skip
    for net in (net_a, net_b):
        net.records = [
            DnsRecord(hostname=a.hostname, fqdn=a.fqdn, ip=a.nics[0].ip, mac=a.nics[0].mac)
            for a in vms.values()
            if a.nics[0].network_id == net.id
        ]
    await fabric.ensure(d, [fabric.Port(d / "host", HOST_UNDERLAY),
                            fabric.Port(d / "edge", EDGE_UNDERLAY)])
    hn = HostNetwork(d / "host", str(HOST_UNDERLAY.ip), str(EDGE_UNDERLAY.ip))
    driver = QemuDriver(d / "run", accel="tcg")
    e = Env(d, hn, Edge(names.netns_name(d / "edge"), _public_pool()), driver, key, public_ip,
            [net_a, net_b], vms, {n: a.nics[0].ip for n, a in vms.items()})  # fmt: skip
    try:
        await hn.converge(e.networks, list(vms.values()), set())  # bridges + dnsmasq first
        for name, a in vms.items():
            vdir = d / name
            vdir.mkdir()
            disk = vdir / "disk.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            str(image / "rootfs.qcow2"), str(disk)], check=True)  # fmt: skip
            seed = vdir / "seed.iso"
            build_seed_iso(seed, instance_id=a.id, hostname=name, user_data=None,
                           ssh_public_keys=[pub])  # fmt: skip
            meta = (image / "image.json").read_text()
            cmdline = json.loads(meta)["kernel_cmdline"]
            await driver.start(VMSpec(
                vm_id=a.id, hostname=name, arch=Arch.X86_64, vcpus=1, ram_mib=128,
                boot_disk=disk, kernel=image / "vmlinuz",
                initrd=image / "initrd.img", kernel_cmdline=cmdline, seed_iso=seed,
                netns=hn.netns, nics=hn.nic_specs(a),
            ))  # fmt: skip
        await e.converge()  # the taps exist now: attach, shape, firewall, the edge
        await asyncio.gather(*(_wait_ssh(e, n) for n in vms))
        yield e
    finally:
        for a in vms.values():
            with contextlib.suppress(Exception):
                await driver.destroy(a.id)
        await e.edge.close()
        await echo_gate.remove_table(e.edge.netns)
        await hn.teardown()
        await namespace.delete(names.netns_name(d / "edge"))
        await fabric.teardown(d)
        shutil.rmtree(d, ignore_errors=True)


async def test_dhcp_gives_the_reserved_ip_and_dns_resolves_fqdns(env: Env) -> None:
    _, addr = await env.ssh("a1", "ip -4 -o addr show eth0")
    assert "inet 10.231.1.11/24" in addr
    _, resolv = await env.ssh("a1", "cat /etc/resolv.conf")
    assert "nameserver 10.231.1.1" in resolv and f"p1.{ZONE}" in resolv
    a2 = env.vms["a2"].fqdn
    _, out = await env.ssh("a1", f"nslookup {a2} 10.231.1.1")
    assert "10.231.1.12" in out
    _, out = await env.ssh("a1", f"ping -c 1 -W 3 {a2}")
    assert "1 packets received" in out
    _, out = await env.ssh("a2", "ping -c 1 -W 3 a1")  # the short name, via the search domain
    assert "1 packets received" in out


async def test_converge_is_cheap_when_nothing_changed(env: Env) -> None:
    await env.converge()
    t = time.perf_counter()
    for _ in range(10):
        await env.converge_host()
    assert (time.perf_counter() - t) / 10 < 0.05


async def test_ssh_through_the_public_loopback_ip(env: Env) -> None:
    _, out = await sh(["ssh", "-i", str(env.key), *SSH_OPTS, f"cumulo@{env.public_ip}",
                       "hostname; id -un"])  # fmt: skip
    assert out.split() == ["a1", "cumulo"]
    # the root namespace never learns a route to a VM network
    _, routes = await sh(["ip", "-4", "route", "show", "table", "all"])
    assert "10.231." not in routes
    _, addrs = await sh(["ip", "-4", "addr"])
    assert "10.231." not in addrs


async def test_ssh_by_fqdn_with_a_resolver_pointed_at_the_edges_dns(env: Env) -> None:
    """The machine's own resolver is left alone: ssh runs in a mount namespace of its own
    whose /etc/resolv.conf names the edge's DNS (the pool's last usable address)."""
    conf = env.dir / "resolv.conf"
    conf.write_text(f"nameserver {public_dns_address(_public_pool())}\n"
                    "options timeout:2 attempts:2\n")
    login = " ".join(["ssh", "-i", str(env.key), *SSH_OPTS, f"cumulo@{env.vms['a1'].fqdn}",
                      "hostname"])
    _, out = await sh(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"mount --bind {conf} /etc/resolv.conf && exec {login}"])
    assert out.split() == ["a1"]
    # a name of no instance with a public address does not resolve (a2 has none)
    code, out = await sh(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          f"mount --bind {conf} /etc/resolv.conf && exec getent hosts "
                          f"{env.vms['a2'].fqdn}"], check=False)
    assert code != 0 and not out.strip()


async def test_from_the_underlay_only_the_edge_gets_in(env: Env) -> None:
    """Another machine on the underlay, routing to a1 via its host like the edge does, reaches
    nothing; the edge's namespace, the same way, reaches a1's SSH port."""
    stranger = env.dir / "stranger"
    await fabric.ensure(env.dir, [fabric.Port(stranger, ipaddress.IPv4Interface(
        "10.251.0.9/24"))])
    try:
        for who, expect in ((names.netns_name(stranger), 1), (env.edge.netns, 0)):
            await sh(["ip", "-n", who, "route", "replace", f"{env.ips['a1']}/32", "via",
                      str(HOST_UNDERLAY.ip)])
            code, out = await sh(["ip", "netns", "exec", who, "timeout", "5", "bash", "-c",
                                  f"exec 3<>/dev/tcp/{env.ips['a1']}/22 && head -c 4 <&3"],
                                 check=False)
            assert (code == 0) == (expect == 0) and (out == "SSH-") == (expect == 0), (who, out)
    finally:
        await namespace.delete(names.netns_name(stranger))


async def test_projects_cannot_exchange_a_packet(env: Env) -> None:
    a1, b1 = env.ips["a1"], env.ips["b1"]
    code, _ = await env.ssh("b1", f"ping -c 2 -W 1 {a1}", check=False)
    assert code != 0
    code, _ = await env.ssh("a1", f"ping -c 2 -W 1 {b1}", check=False)
    assert code != 0
    code, _ = await env.ssh("b1", f"nc -w 2 {a1} 22 < /dev/null", check=False)
    assert code != 0
    code, _ = await env.ssh("a1", "ping -c 1 -W 1 10.231.2.1", check=False)  # other gateway
    assert code != 0
    code, out = await env.ssh("b1", f"nslookup {env.vms['a1'].fqdn} 10.231.2.1", check=False)
    assert "10.231.1.11" not in out
    # and the sanity check that the probes do work inside a network
    code, _ = await env.ssh("a2", f"ping -c 1 -W 2 {a1}", check=False)
    assert code == 0


async def test_a_port_opens_within_2s_of_a_new_rule(env: Env) -> None:
    await env.ssh("a1", "mkdir -p /tmp/www && echo hello-8080 > /tmp/www/index.html && "
                  "(httpd -p 8080 -h /tmp/www)")  # fmt: skip
    # (busybox-static's wget segfaults in this image; nc speaks HTTP/1.0 well enough)
    fetch = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {env.vms['a1'].fqdn} 8080"
    code, _ = await env.ssh("a2", fetch, check=False)
    assert code != 0, "port 8080 must be closed by default"
    with socket.socket() as s:
        assert s.connect_ex((env.public_ip, 8080)) != 0

    a1 = env.vms["a1"]
    env.vms["a1"] = a1.model_copy(
        update={"ingress": [*a1.ingress, FirewallRule(proto="tcp", port=8080)]}
    )
    t0 = time.monotonic()
    await env.converge()
    deadline = t0 + 2.0
    while True:
        code, out = await env.ssh("a2", fetch, timeout=10, check=False)
        if code == 0 or time.monotonic() > deadline:
            break
    assert code == 0 and "hello-8080" in out, out
    assert time.monotonic() - t0 < 2.0 + 1.5  # the ssh round trip itself takes a moment
    reader, writer = await asyncio.open_connection(env.public_ip, 8080)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    body = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"hello-8080" in body


async def _udp_no_ports(env: Env) -> int:
    """Datagrams a1's kernel received for a port nothing listens on (the tiny image has no
    UDP server: busybox's nc has no -u, and no udpsvd; bash's /dev/udp only connects)."""
    _, out = await env.ssh("a1", "cat /proc/net/snmp")
    head, values = [line.split() for line in out.splitlines() if line.startswith("Udp:")]
    return int(values[head.index("NoPorts")])


async def test_udp_reaches_the_instance_through_the_edge_as_its_rules_allow(env: Env) -> None:
    def send(port: int, n: int = 3) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(n):
                with contextlib.suppress(ConnectionRefusedError):  # nobody listening
                    s.sendto(b"probe", (env.public_ip, port))
                    time.sleep(0.05)

    before = await _udp_no_ports(env)
    send(5353)  # no rule: the edge does not even listen
    send(5354)  # a rule, for other clients than this one
    a1 = env.vms["a1"]
    env.vms["a1"] = a1.model_copy(update={"ingress": [
        *a1.ingress, FirewallRule(proto="udp", port=5354, cidr="192.0.2.0/24")]})
    await env.converge()
    send(5354)
    await asyncio.sleep(0.5)
    assert await _udp_no_ports(env) == before
    env.vms["a1"] = a1.model_copy(update={"ingress": [
        *a1.ingress, FirewallRule(proto="udp", port=5353, cidr="127.0.0.0/8")]})
    await env.converge()
    send(5353)
    deadline = time.monotonic() + 10
    while (got := await _udp_no_ports(env) - before) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert got == 3
    env.vms["a1"] = a1
    await env.converge()


async def _timed(coro: object) -> float:
    t = time.monotonic()
    await coro  # type: ignore[misc]
    return time.monotonic() - t


async def test_bandwidth_cap_in_both_directions(env: Env) -> None:
    n = 3 * 1024 * 1024
    floor = n * 8 / (CAP_MBPS * 1_000_000)
    into = await _timed(env.ssh("a1", "cat > /dev/null", stdin=b"\0" * n, timeout=120))
    out_of = await _timed(env.ssh("a1", f"head -c {n} /dev/zero", timeout=120))
    free = await _timed(env.ssh("a2", "cat > /dev/null", stdin=b"\0" * n, timeout=120))
    print(f"cap {CAP_MBPS} Mbit/s, {n} bytes: into {into:.2f}s out {out_of:.2f}s "
          f"(floor {floor:.2f}s); uncapped a2 {free:.2f}s")  # fmt: skip
    assert into >= floor
    assert out_of >= floor
    assert free < floor, "uncapped must be faster than the cap, else this test proves nothing"
    _, qd = await sh(["tc", "-n", env.ns, "qdisc", "show"])
    assert "tbf" in qd


async def _pinged(ip: str) -> bool:
    """One echo request from the root namespace (busybox's ping: the machine may have no other)."""
    code, _ = await sh(["busybox", "ping", "-c", "1", "-W", "3", ip], check=False)
    return code == 0


async def test_a_ping_of_a_public_ip_is_answered_only_when_its_instance_answers(env: Env) -> None:
    """Without the edge's gate the machine itself answers every loopback address: each
    `not` below would fail."""
    a1, b1 = env.vms["a1"], env.vms["b1"]
    assert await _pinged(env.public_ip)  # a1's rules allow ICMP (from anywhere)
    unassigned = str(ipaddress.IPv4Network(_public_pool())[250])
    assert not await _pinged(unassigned)  # an address of the pool that names no instance
    for icmp in ([], [FirewallRule(proto="icmp", cidr="192.0.2.0/24")]):  # none; not from here
        env.vms["a1"] = a1.model_copy(update={"ingress": [
            *(r for r in a1.ingress if r.proto != "icmp"), *icmp]})
        await env.converge()
        assert not await _pinged(env.public_ip), icmp
    env.vms["a1"] = a1
    await env.converge()
    assert await _pinged(env.public_ip)
    # An instance that stops answers no more: b1 gets a public address, then is stopped.
    other = _free_public_ip(after=int(ipaddress.IPv4Address(env.public_ip)) & 0xFF)
    env.vms["b1"] = b1.model_copy(update={"public_ip": other})
    await env.converge()
    assert await _pinged(other)
    await env.driver.destroy(b1.id)
    assert not await _pinged(other)
    assert await _pinged(env.public_ip)  # and the others still do


async def test_teardown_leaves_nothing(env: Env) -> None:
    pidfiles = list((env.hn.state_dir / "dnsmasq").glob("*/dnsmasq.pid"))
    pids = [int(p.read_text()) for p in pidfiles]
    assert len(pids) == 2
    for a in env.vms.values():
        await env.driver.destroy(a.id)
    fresh = HostNetwork(env.hn.host_dir)  # as `cumulo down` does, from another process
    await fresh.teardown()
    await env.hn.teardown()  # the agent's own object
    await env.edge.close()  # the edge's listeners
    # Its table of the root namespace outlives it (no edge: no answer) until `cumulo down`.
    table = ["nft", "list", "table", "ip", echo_gate.table_name(env.edge.netns)]
    assert (await sh(table, check=False))[0] == 0
    await echo_gate.remove_table(env.edge.netns)
    assert (await sh(table, check=False))[0] != 0
    assert not Path("/run/netns", env.ns).exists()
    _, nslist = await sh(["ip", "netns", "list"])
    assert env.ns not in nslist
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or b"dnsmasq" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    assert not any(dnsmasq.live_pid(dnsmasq.DnsmasqPaths(p.parent)) for p in pidfiles)
    with socket.socket() as s:
        assert s.connect_ex((env.public_ip, 22)) != 0
    assert names.netns_name(env.hn.host_dir) == env.ns
