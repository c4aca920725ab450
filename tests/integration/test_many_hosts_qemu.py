"""`cumulo up --hosts 3` with real VMs (TCG): an instance on each simulated host, in both
zones and both architectures, each reached by SSH at its public IP (the edge's) and at its
FQDN (`cumulo ssh FQDN`, and plain ssh resolving it at the edge's DNS), and pinged at its
public IP; a host opens no file of another host, of the API or of the machine's image cache
(it fetches over HTTP); a frozen agent's host goes `down`, its instance `unknown`, and both
come back with the VM re-adopted (same QEMU pid), as after a killed agent; the edge killed
with SIGKILL comes back and serves again; a public IP moved to an instance on another host
answers from there (how long it took is printed); `cumulo down` leaves no namespace, link or
process of any host or of the edge, nor the edge's table of the root namespace."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from cumulo.agent.net.names import netns_name
from cumulo.allinone.edge_process import edge_netns
from cumulo.allinone.fabric import fabric_netns
from cumulo.allinone.paths import StatePaths
from cumulo.domain.netaddr import public_dns_address
from cumulo.edge import echo_gate
from tests.integration.conftest import Cloud, agent_pids, qemu_pids
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu

HOSTS = ("local", "local-2", "local-3")
REPO = Path(__file__).resolve().parents[2]
# What a host may open besides its own dir: the system's files and cumulo's own code, and the
# machine's registry of the VMs' uids (/run/cumulo: one per machine, so that no two QEMUs of
# the machine share a uid; separate machines have one each; simulated hosts share it).
SYSTEM = ("/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/etc/", "/proc/", "/sys/", "/dev/",
          "/run/netns/", "/var/run/netns/", "/run/cumulo/")
OPENED = re.compile(r'\bopen(?:at2?)?\((?:[A-Z_]+, )?"([^"]*)"')


def agent_of(c: Cloud, host: str) -> int:
    """The pid of host HOST's agent (its command line names its own config)."""
    marker = f"{c.state_dir / 'hosts' / host}/".encode()
    (pid,) = [pid for pid in agent_pids(c.state_dir)
              if marker in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return pid


def wait_host(c: Cloud, host: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (shown := c.json("host", "show", host)["state"]) != state:
        assert time.monotonic() < deadline, f"host {host} still {shown} after {timeout} s"
        time.sleep(0.5)


def host_keys(ip: str) -> set[str]:
    """The SSH host keys served at ip:22 ("type key"), or none."""
    r = subprocess.run(["ssh-keyscan", "-T", "5", ip], capture_output=True, text=True)
    return {" ".join(line.split()[1:3]) for line in r.stdout.splitlines()
            if line and not line.startswith("#")}


def by_fqdn(c: Cloud, fqdn: str, *command: str, key: str = "k"
            ) -> subprocess.CompletedProcess[str]:
    """A plain `ssh cumulo@FQDN` (with the key pair `key`) whose resolver asks the edge's
    DNS: in a mount namespace of its own, so the machine's /etc/resolv.conf is left alone."""
    pool = tomllib.loads(c.config)["network"]["public_pool"]
    conf = c.state_dir / "resolv.conf"
    conf.write_text(f"nameserver {public_dns_address(pool)}\noptions timeout:2 attempts:2\n")
    login = ["ssh", "-i", str(c.state_dir / "keys" / key), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
             "-o", "ConnectTimeout=10", f"cumulo@{fqdn}", *command]
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f'mount --bind {conf} /etc/resolv.conf && exec "$@"', "sh", *login],
                          capture_output=True, text=True, timeout=120)


def pinged(ip: str) -> bool:
    """Echo requests from the machine (busybox's ping: it may have no other); one answer do."""
    return subprocess.run(["busybox", "ping", "-c", "3", "-W", "5", ip],
                          capture_output=True).returncode == 0


def foreign_files(trace: Path, host_dir: Path) -> set[str]:
    """The absolute paths a traced host opened that are neither its own nor the system's."""
    allowed = (f"{host_dir}/", f"{sys.prefix}/", f"{sys.base_prefix}/", f"{REPO}/src/", *SYSTEM)
    seen = set()
    for line in trace.read_text(errors="replace").splitlines():
        if (m := OPENED.search(line)) and m.group(1).startswith("/"):
            seen.add(os.path.normpath(m.group(1)))
    return {p for p in seen if not (p + "/").startswith(allowed)}


def test_an_instance_on_each_host_reached_by_ssh_and_down_leaves_nothing(
        qemu_cloud_3: Cloud) -> None:
    c = qemu_cloud_3
    c.json("keypair", "create", "k")
    placed = {}
    # The host alone in local-1b is traced from before its first instance: every file its
    # agent, and the QEMU, qemu-img, dnsmasq... it starts, opens while it fetches the image
    # and boots the VM.
    (lone,) = [h["name"] for h in c.json("host", "list") if h["zone"] == "local-1b"]
    trace = c.state_dir / f"{lone}.strace"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=open,openat,openat2",
                               "-o", str(trace), "-p", str(agent_of(c, lone))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name, zone, arch in (("a-x86", "local-1a", "x86_64"), ("a-arm", "local-1a", "arm64"),
                             ("b-x86", "local-1b", "x86_64")):
        vm = c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano",
                    "--arch", arch, "--zone", zone, "--key", "k", "--wait")
        assert (vm["state"], vm["zone"]) == ("running", zone)
        placed[name] = vm["host"]
    wait_ssh(c, "b-x86", timeout=300)
    tracer.send_signal(signal.SIGINT)  # strace detaches; the agent runs on
    tracer.wait(timeout=30)
    assert trace.stat().st_size > 0
    assert placed["b-x86"] == lone
    foreign = foreign_files(trace, c.state_dir / "hosts" / lone)
    assert not foreign, "\n".join(sorted(foreign))
    assert sorted(placed.values()) == sorted(HOSTS), placed  # one on each host
    for name, host in placed.items():
        wait_ssh(c, name, timeout=300)
        assert ssh(c, name, "hostname").stdout.strip() == name
        # Each VM runs in its own host's namespace, from its own host's files.
        (pid,) = [pid for vm_id, pid in qemu_pids(c.state_dir).items()
                  if vm_id == c.json("instance", "show", name)["id"]]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert str(c.state_dir / "hosts" / host).encode() in cmd
        # By its FQDN too (the edge's DNS), and its public IP answers a ping (the edge's
        # echo, answered only when the instance answers its own).
        shown = c.json("instance", "show", name)
        assert c.cli("ssh", shown["fqdn"], "--", "hostname").stdout.strip() == name
        plain = by_fqdn(c, shown["fqdn"], "hostname")
        assert plain.stdout.strip() == name, plain.stderr
        assert pinged(shown["public_ip"]), name

    # A frozen agent: its host is down within 15 s (the margin is the CLI's own start-up on
    # a loaded machine), its instance `unknown`, the others untouched; back on SIGCONT, with
    # the same QEMU (re-adopted, not rebooted).
    vms = qemu_pids(c.state_dir)
    b_id = c.json("instance", "show", "b-x86")["id"]
    agent = agent_of(c, lone)
    os.kill(agent, signal.SIGSTOP)
    try:
        wait_host(c, lone, "down", timeout=15 + 5)
        vm = c.json("instance", "show", "b-x86")
        assert vm["state"] == "unknown" and "host is down" in vm["state_reason"], vm
        assert c.json("instance", "show", "a-x86")["state"] == "running"
    finally:
        os.kill(agent, signal.SIGCONT)
    wait_host(c, lone, "up", timeout=30)
    c.wait_state("b-x86", "running", 30)
    assert qemu_pids(c.state_dir)[b_id] == vms[b_id]
    assert ssh(c, "b-x86", "hostname").stdout.strip() == "b-x86"

    # A killed agent: `cumulo up` starts another, which re-adopts its host's VMs.
    a_id = c.json("instance", "show", "a-x86")["id"]
    killed = agent_of(c, placed["a-x86"])
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (agents := [p for p in agent_pids(c.state_dir) if p != killed]) and len(agents) < 3:
        assert time.monotonic() < deadline, "the killed agent was not restarted"
        time.sleep(0.5)
    wait_host(c, placed["a-x86"], "up", timeout=30)
    assert c.json("instance", "show", "a-x86")["state"] == "running"
    assert qemu_pids(c.state_dir)[a_id] == vms[a_id]
    assert ssh(c, "a-x86", "hostname").stdout.strip() == "a-x86"

    # The edge killed (SIGKILL): `cumulo up` starts another, which serves every public IP
    # again from its first table.
    (edge,) = agent_pids(c.state_dir, b"cumulo.edge")
    os.kill(edge, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not agent_pids(c.state_dir, b"cumulo.edge") - {edge}:
        assert time.monotonic() < deadline, "the killed edge was not restarted"
        time.sleep(0.2)
    for name in placed:
        wait_ssh(c, name, timeout=60)

    # a-x86's public IP moved to b-x86, on another host (and zone): it answers from there,
    # with b-x86's host key, once the edge has the change.
    ip = c.json("instance", "show", "a-x86")["public_ip"]
    b_key = host_keys(c.json("instance", "show", "b-x86")["public_ip"])
    assert b_key and host_keys(ip) and host_keys(ip) != b_key
    token = tomllib.loads((c.state_dir / "client.toml").read_text())["token"]
    t0 = time.monotonic()  # the API called directly: the CLI's own start-up is not counted
    r = httpx.post(f"http://127.0.0.1:{c.port}/v1/public-ips/{ip}/attach",
                   json={"instance": "b-x86", "reassociate": True},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    answered = time.monotonic()
    while host_keys(ip) != b_key:
        assert time.monotonic() < t0 + 60, "the moved public IP never answered from b-x86"
        answered = time.monotonic()
        time.sleep(0.02)
    # (the scan that first got b-x86's key started at `answered`)
    print(f"public IP moved across hosts: in effect {answered - t0:.2f} s after the attach "
          "request was sent")
    assert ssh(c, "b-x86", "hostname").stdout.strip() == "b-x86"
    assert c.json("instance", "show", "b-x86")["public_ip"] == ip

    namespaces = {fabric_netns(c.state_dir), edge_netns(StatePaths(c.state_dir))} | {
        netns_name(c.state_dir / "hosts" / h) for h in HOSTS}

    c.stop()
    c.cli("down", "--state-dir", str(c.state_dir))
    assert qemu_pids(c.state_dir) == {} and agent_pids(c.state_dir) == set()
    assert agent_pids(c.state_dir, b"cumulo.edge") == set()
    table = echo_gate.table_name(edge_netns(StatePaths(c.state_dir)))
    assert subprocess.run(["nft", "list", "table", "ip", table]).returncode != 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in namespaces if n in listed]
    dnsmasq = subprocess.run(["pgrep", "-af", "dnsmasq"], capture_output=True, text=True).stdout
    assert str(c.state_dir) not in dnsmasq
