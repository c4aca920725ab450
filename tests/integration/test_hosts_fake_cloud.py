"""Hosts and placement through the CLI of a real `cumulo up` (fake driver): the operator's
host commands, placement groups, and a frozen agent (SIGSTOP): its host goes down within 15 s,
its instances show unknown, and both come back when it resumes (SIGCONT)."""

from __future__ import annotations

import os
import signal
import time

import cumulo
from tests.integration.conftest import Cloud, wait_one_agent

NANO = ("--image", "tiny", "--type", "t1.nano")


def test_host_commands_and_placement_groups(fake_cloud: Cloud) -> None:
    c = fake_cloud
    [host] = c.json("host", "list")
    assert (host["name"], host["zone"], host["state"]) == ("local", "local-1a", "up")
    # A single host is on the underlay too: the edge reaches its instances there.
    assert host["agent_version"] == cumulo.__version__ and host["underlay_ip"] == "10.250.0.1"
    assert (host["vcpus_total"], host["vcpus_allocatable"], host["ram_mib_total"]) == (
        16, 64, 4096)  # cumulo.toml's [host], under the default ratios (4.0, 1.0)
    assert c.json("host", "show", "local")["last_heartbeat_at"] >= host["last_heartbeat_at"]
    vm = c.json("instance", "create", "web-1", *NANO)
    assert vm["host"] == "local" and vm["zone"] == "local-1a"  # admins see the host

    shown = c.json("host", "disable", "local", "--reason", "kernel update")
    assert (shown["state"], shown["disabled_reason"]) == ("disabled", "kernel update")
    r = c.cli("instance", "create", "web-2", *NANO, check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == ("error[no_host_fits]: no host fits: zone local-1a has 1 host: "
                                "1 disabled")
    assert c.json("instance", "show", "web-1")["host"] == "local"  # kept
    assert "kernel update" in c.cli("host", "show", "local").stdout
    assert c.json("host", "enable", "local")["state"] == "up"
    assert c.json("instance", "create", "web-2", *NANO)["host"] == "local"

    group = c.json("placement-group", "create", "ha", "--strategy", "spread")
    assert group["strategy"] == "spread"
    assert c.json("instance", "create", "ha-1", *NANO, "--placement-group",
                  "ha")["placement_group"] == "ha"
    r = c.cli("instance", "create", "ha-2", *NANO, "--placement-group", "ha", check=False)
    assert r.stderr.strip() == ("error[no_host_fits]: no host fits: zone local-1a has 1 host: "
                                "1 already holds an instance of spread placement group ha")
    assert [(g["name"], g["instances"]) for g in c.json("placement-group", "list")] == [
        ("ha", ["ha-1"])]
    r = c.cli("placement-group", "delete", "ha", check=False)
    assert r.stderr.startswith("error[placement_group_in_use]: ")
    r = c.cli("placement-group", "create", "x", "--strategy", "random", check=False)
    assert r.stderr.startswith("error[invalid_strategy]: ")
    r = c.cli("host", "show", "nope", check=False)
    assert r.stderr.startswith("error[unknown_host]: ")
    zones = {z["name"]: z for z in c.json("zone", "list")}
    assert [h["name"] for h in zones["local-1a"]["hosts"]] == ["local"]
    assert zones["local-1b"]["hosts"] == [] and zones["local-1a"]["vcpus_free"] == 64 - 3


def _wait_host(c: Cloud, state: str, timeout: float) -> float:
    start = time.monotonic()
    while c.json("host", "show", "local")["state"] != state:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"host not {state} after {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - start


def test_a_frozen_agent_s_host_goes_down_and_comes_back(fake_cloud: Cloud) -> None:
    c = fake_cloud
    c.json("instance", "create", "web-1", *NANO, "--wait")
    agent = wait_one_agent(c.state_dir, timeout=10)
    os.kill(agent, signal.SIGSTOP)
    try:
        # 15 s promised; the margin is the CLI's own start-up on a loaded machine.
        _wait_host(c, "down", timeout=15 + 5)
        vm = c.json("instance", "show", "web-1")
        assert vm["state"] == "unknown", vm
        assert "host is down" in vm["state_reason"] and "running" in vm["state_reason"]
        r = c.cli("instance", "create", "web-2", *NANO, check=False)
        assert r.stderr.strip() == ("error[no_host_fits]: no host fits: zone local-1a has 1 "
                                    "host: 1 down")
    finally:
        os.kill(agent, signal.SIGCONT)
    _wait_host(c, "up", timeout=30)
    assert c.json("instance", "show", "web-1")["state"] == "running"
    assert wait_one_agent(c.state_dir, timeout=10) == agent  # the same agent, not a new one


def test_three_hosts_listed_with_their_underlay_and_spread_apart(fake_cloud_3: Cloud) -> None:
    c = fake_cloud_3
    listed = {h["name"]: h for h in c.json("host", "list")}
    assert {n: (h["zone"], h["state"]) for n, h in listed.items()} == {
        "local": ("local-1a", "up"), "local-2": ("local-1b", "up"),
        "local-3": ("local-1a", "up")}
    # Each agent registered its underlay address (cumulo up --hosts gives 10.250.0.N).
    assert sorted(h["underlay_ip"] for h in listed.values()) == [
        "10.250.0.1", "10.250.0.2", "10.250.0.3"]
    c.json("placement-group", "create", "ha", "--strategy", "spread")
    placed = {c.json("instance", "create", f"ha-{i}", *NANO, "--placement-group",
                     "ha")["host"] for i in range(2)}
    assert placed == {"local", "local-3"}  # local-1a's two hosts, one instance each
    r = c.cli("instance", "create", "ha-2", *NANO, "--placement-group", "ha", check=False)
    assert r.stderr.strip() == ("error[no_host_fits]: no host fits: zone local-1a has 2 hosts: "
                                "2 already hold an instance of spread placement group ha")
    # In the other zone the group still has room: another host.
    assert c.json("instance", "create", "ha-2", *NANO, "--placement-group", "ha", "--zone",
                  "local-1b")["host"] == "local-2"
    c.json("host", "disable", "local-3")
    assert {c.json("instance", "create", f"web-{i}", *NANO)["host"] for i in range(3)} == {
        "local"}
    zones = {z["name"]: z for z in c.json("zone", "list")}
    assert [(h["name"], h["state"]) for h in zones["local-1a"]["hosts"]] == [
        ("local", "up"), ("local-3", "disabled")]
    local = listed["local"]
    assert zones["local-1a"]["vcpus_free"] == local["vcpus_allocatable"] - 4  # ha-0/1 + 3 web
