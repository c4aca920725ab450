"""The whole control plane for real (`cumulo up`, HTTP, agent process, reconciler) with the
fake driver: the CLI contract, error handling and the lifecycle without booting VMs."""

from __future__ import annotations

import os
import stat

from tests.integration.conftest import Cloud, agent_pids, wait_agents_gone, wait_one_agent

FIELDS = {"id", "name", "project", "state", "zone", "arch", "type", "vcpus", "ram_mib",
          "image", "host", "created_at"}


def test_up_writes_a_private_client_config(fake_cloud: Cloud) -> None:
    cfg = fake_cloud.state_dir / "client.toml"
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    text = cfg.read_text()
    assert f"127.0.0.1:{fake_cloud.port}" in text and "token" in text


def test_lifecycle_through_the_cli(fake_cloud: Cloud) -> None:
    c = fake_cloud
    vm = c.json("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano", "--wait")
    assert vm.keys() >= FIELDS
    assert (vm["state"], vm["host"], vm["zone"]) == ("running", "local", "local-1a")
    listed = c.json("instance", "list")
    assert [i["name"] for i in listed] == ["web-1"]
    table = c.cli("instance", "list").stdout
    assert "web-1" in table and "running" in table
    assert "hostname: web-1" in c.cli("instance", "console-log", "web-1").stdout
    assert c.json("instance", "stop", "web-1", "--wait")["state"] == "stopped"
    assert c.json("instance", "start", "web-1", "--wait")["state"] == "running"
    assert c.json("instance", "reboot", "web-1", "--wait")["state"] == "running"
    c.cli("instance", "delete", "web-1", "--wait")
    assert c.json("instance", "list") == []


def test_a_killed_up_takes_its_agent_along_and_the_next_runs_one(fake_cloud: Cloud) -> None:
    # Before: the agent outlived a SIGKILLed `cumulo up`, and the next `cumulo up` started a
    # second agent for the same host, both acting on the same VMs.
    c = fake_cloud
    vm = c.json("instance", "create", "keep-1", "--image", "tiny", "--type", "t1.nano", "--wait")
    old = wait_one_agent(c.state_dir, timeout=10)
    assert (c.state_dir / "hosts/local/agent.lock").read_text().strip() == str(old)

    c.kill()
    wait_agents_gone({old}, c.state_dir, timeout=10)

    c.start()
    new = wait_one_agent(c.state_dir, timeout=10)
    assert new != old
    assert [i["id"] for i in c.json("instance", "list")] == [vm["id"]]
    assert c.json("instance", "create", "keep-2", "--image", "tiny", "--type", "t1.nano",
                  "--wait")["state"] == "running"
    assert agent_pids(c.state_dir) == {new}


def test_catalogue_commands(fake_cloud: Cloud) -> None:
    c = fake_cloud
    zones = {z["name"]: z for z in c.json("zone", "list")}
    assert zones["local-1a"]["hosts"][0]["name"] == "local"
    assert zones["local-1a"]["ram_mib_free"] == 4096
    c.json("instance", "create", "a", "--image", "tiny", "--vcpus", "1", "--ram", "256")
    assert {z["name"]: z for z in c.json("zone", "list")}["local-1a"]["ram_mib_free"] == 3840
    assert "local-1a" in c.cli("zone", "list").stdout
    assert "t1.nano" in {t["name"] for t in c.json("type", "list")}
    image = c.json("image", "show", "tiny")
    assert set(image["architectures"]) == {"x86_64", "arm64"}


def test_projects_and_project_scoping(fake_cloud: Cloud) -> None:
    c = fake_cloud
    c.cli("project", "create", "team-a")
    assert {p["name"] for p in c.json("project", "list")} == {"default", "team-a"}
    c.json("--project", "team-a", "instance", "create", "x", "--image", "tiny", "--type",
           "t1.nano")
    assert c.json("instance", "list") == []
    assert [i["project"] for i in c.json("--project", "team-a", "instance", "list")] == ["team-a"]
    r = c.cli("project", "delete", "team-a", check=False)
    assert r.returncode != 0 and "project_not_empty" in r.stderr
    c.cli("--project", "team-a", "instance", "delete", "x", "--wait")
    c.cli("project", "delete", "team-a")
    assert {p["name"] for p in c.json("project", "list")} == {"default"}


def test_bad_input_one_line_error_nonzero_exit_nothing_changed(fake_cloud: Cloud) -> None:
    c = fake_cloud
    c.json("instance", "create", "taken", "--image", "tiny", "--type", "t1.nano")
    big = c.state_dir / "big-user-data"
    big.write_bytes(b"#!/bin/sh\n" + b"x" * (64 * 1024))
    cases = [
        (["--type", "t9.huge"], "unknown_type"),
        (["--image", "nope"], "unknown_image"),
        (["--zone", "atlantis"], "unknown_zone"),
        (["--arch", "mips"], "unknown_arch"),
        (["--vcpus", "0", "--ram", "128"], "invalid_size"),
        (["--vcpus", "1", "--ram", "99999999"], "too_large"),
        (["--user-data", str(big)], "user_data_too_large"),
    ]
    before = c.json("instance", "list")
    for extra, code in cases:
        args = ["instance", "create", "ok-name", "--image", "tiny"]
        if "--type" not in extra and "--vcpus" not in extra:
            args += ["--type", "t1.nano"]
        if "--image" in extra:
            args = ["instance", "create", "ok-name", *extra, "--type", "t1.nano"]
        else:
            args += extra
        r = c.cli(*args, check=False)
        assert r.returncode != 0, (extra, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and code in lines[0], (extra, r.stderr)
    for name, code in (("Bad_Name", "invalid_name"), ("taken", "name_taken")):
        r = c.cli("instance", "create", name, "--image", "tiny", "--type", "t1.nano",
                  check=False)
        assert r.returncode != 0 and code in r.stderr
    r = c.cli("instance", "start", "taken", check=False)
    assert r.returncode != 0 and "invalid_state" in r.stderr
    r = c.cli("instance", "show", "ghost", check=False)
    assert r.returncode != 0 and "unknown_instance" in r.stderr
    assert c.json("instance", "list") == before


def test_cli_without_a_cloud_says_so(fake_cloud: Cloud) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env["CUMULO_STATE_DIR"] = "/nonexistent-cumulo"
    r = subprocess.run([sys.executable, "-m", "cumulo.cli.main", "instance", "list"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no_config" in r.stderr
    env["CUMULO_URL"] = f"http://127.0.0.1:{fake_cloud.port}"
    env["CUMULO_TOKEN"] = "wrong"
    r = subprocess.run([sys.executable, "-m", "cumulo.cli.main", "instance", "list"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unauthorized" in r.stderr
