"""`cumulo up --hosts 3` with the fake driver: three agents, each a simulated machine with
its own namespace, state dir, lock and underlay address; placement over zones and hosts;
`cumulo down` leaves nothing; the next `cumulo up` brings every instance back where it ran."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cumulo.agent.net.names import netns_name
from cumulo.allinone.fabric import UNDERLAY_IF, fabric_netns
from tests.integration.conftest import CUMULO, Cloud, agent_pids


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
    # Each host fetched what it boots into its own cache over HTTP (no file shared).
    tiny = {v["arch"]: v["id"] for v in c.json("image", "show", "tiny")["variants"]}
    for vm in c.json("instance", "list"):
        cache = c.state_dir / "hosts" / vm["host"] / "images" / tiny[vm["arch"]]
        assert [f.name.split(".")[0] for f in sorted(cache.iterdir())] == [
            "disk", "initrd", "kernel"], vm

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


def _hosts_up(c: Cloud) -> dict[str, str]:
    return {h["name"]: z["name"] for z in c.json("zone", "list") for h in z["hosts"]
            if h["state"] == "up"}


def test_a_host_joins_over_the_network_with_a_one_time_token(fake_cloud: Cloud,
                                                             tmp_path: Path) -> None:
    c = fake_cloud
    made = c.json("host", "join-token", "create", "--zone", "local-1b", "--ttl", "10m")
    host_dir = tmp_path / "hv-far"
    argv = [*CUMULO, "agent", "--api", f"http://127.0.0.1:{c.port}", "--zone", "local-1b",
            "--name", "hv-far", "--state-dir", str(host_dir), "--driver", "fake"]

    def start(*extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*argv, *extra], env=c.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    agent = start("--join-token", made["token"])
    try:
        _wait(lambda: _hosts_up(c).get("hv-far") == "local-1b", agent)
        assert (host_dir / "agent.token").stat().st_mode & 0o777 == 0o600
        vm = c.json("instance", "create", "far-1", "--image", "tiny", "--type", "t1.nano",
                    "--zone", "local-1b", "--wait")
        assert (vm["state"], vm["host"]) == ("running", "hv-far")

        # The token is spent: another machine cannot join with it.
        thief = subprocess.run([*CUMULO, "agent", "--api", f"http://127.0.0.1:{c.port}",
                                "--zone", "local-1b", "--name", "hv-thief", "--state-dir",
                                str(tmp_path / "thief"), "--driver", "fake", "--join-token",
                                made["token"]], env=c.env, capture_output=True, text=True,
                               timeout=60)
        assert thief.returncode != 0
        assert thief.stderr.strip().splitlines() == [
            "error[join_token_used]: this join token was already used (by host hv-far)"]

        # Restarted, the agent uses its own token: no join token needed any more.
        agent.terminate()
        agent.wait(timeout=30)
        agent = start()
        deadline = time.monotonic() + 60
        while c.json("instance", "show", "far-1")["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        _wait(lambda: _hosts_up(c).get("hv-far") == "local-1b", agent)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    # A new machine without a join token is told what it lacks.
    bare = subprocess.run([*argv[:-4], "--state-dir", str(tmp_path / "bare"), "--driver",
                           "fake"], env=c.env, capture_output=True, text=True, timeout=60)
    assert bare.returncode != 0 and bare.stderr.startswith("error[no_token]: "), bare.stderr


def _wait(ok: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stderr.read() if proc.stderr else ''!r}")
        assert time.monotonic() < deadline, "the agent did not join in time"
        time.sleep(0.2)
