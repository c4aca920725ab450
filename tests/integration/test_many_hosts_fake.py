"""`cumulo up --hosts 3` with the fake driver: three agents, each a simulated machine with
its own namespace, state dir, lock and underlay address; placement over zones and hosts;
`cumulo down` leaves nothing; the next `cumulo up` brings every instance back where it ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cumulo.agent.net.names import netns_name
from cumulo.allinone.fabric import UNDERLAY_IF, fabric_netns
from tests.integration.conftest import Cloud, agent_pids


def _netns(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True,
                          text=True, timeout=30)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _underlay_ip(host_dir: Path) -> str:
    out = _netns(netns_name(host_dir), "ip", "-4", "-o", "addr", "show", "dev",
                 UNDERLAY_IF).stdout
    return out.split()[3].split("/")[0]


def test_three_hosts_two_zones_their_own_underlay(fake_cloud_3: Cloud) -> None:
    c = fake_cloud_3
    said = c.log.read_text()
    assert "ready: host local is up in zone local-1a, local-2 is up in zone local-1b, " \
           "local-3 is up in zone local-1a" in said, said[-2000:]
    zones = {z["name"]: sorted(h["name"] for h in z["hosts"]) for z in c.json("zone", "list")}
    assert zones == {"local-1a": ["local", "local-3"], "local-1b": ["local-2"]}
    assert len(agent_pids(c.state_dir)) == 3
    for h in ("local", "local-2", "local-3"):
        host_dir = c.state_dir / "hosts" / h
        assert (host_dir / "agent.lock").read_text().strip().isdigit()
        assert (host_dir / "agent.token").stat().st_mode & 0o077 == 0

    # An instance in each zone, of each architecture.
    for zone in ("local-1a", "local-1b"):
        for arch in ("x86_64", "arm64"):
            vm = c.json("instance", "create", f"{arch.replace('_', '-')}-{zone}", "--image",
                        "tiny", "--type", "t1.nano", "--arch", arch, "--zone", zone, "--wait")
            assert (vm["state"], vm["zone"]) == ("running", zone)
            assert vm["host"] in zones[zone]

    # Real packets on the underlay, between the hosts' namespaces only.
    ips = {h: _underlay_ip(c.state_dir / "hosts" / h) for h in ("local", "local-2", "local-3")}
    assert sorted(ips.values()) == ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
    ping = _netns(netns_name(c.state_dir / "hosts" / "local"), "busybox", "ping", "-c", "1",
                  "-W", "2", ips["local-3"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    root_routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True,
                                 text=True).stdout
    root_addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.250." not in root_routes and "10.250." not in root_addrs


def test_down_leaves_nothing_and_up_brings_each_instance_back_where_it_ran(
        fake_cloud_3: Cloud) -> None:
    c = fake_cloud_3
    placed = {}
    for i in range(4):
        vm = c.json("instance", "create", f"vm-{i}", "--image", "tiny", "--type", "t1.nano",
                    "--wait")
        placed[vm["name"]] = vm["host"]
    assert len(set(placed.values())) == 2  # spread over local-1a's two hosts
    namespaces = {fabric_netns(c.state_dir)} | {
        netns_name(c.state_dir / "hosts" / h) for h in ("local", "local-2", "local-3")}
    assert namespaces <= _namespaces()

    c.stop()
    down = c.cli("down", "--state-dir", str(c.state_dir))
    assert down.returncode == 0
    assert not namespaces & _namespaces()
    assert agent_pids(c.state_dir) == set()

    c.up_args = []  # as many hosts as the state dir has
    c.start()
    assert {z["name"]: len(z["hosts"]) for z in c.json("zone", "list")} == {
        "local-1a": 2, "local-1b": 1}
    for name, host in placed.items():
        vm = c.wait_state(name, "running", timeout=60)
        assert vm["host"] == host
    r = c.cli("up", "--state-dir", str(c.state_dir), "--hosts", "2", check=False)
    assert r.returncode != 0
