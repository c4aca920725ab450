"""`cumulo host evacuate` on a real `cumulo up --hosts 3` (fake driver): a host whose agent is
frozen goes down, its running and stopped instances are restarted on the other host of the
zone with their addresses and the volume stored on that other host (the one stored on the down
host is left, detached), and when the agent resumes it removes its copies (never two) and lets
go of that volume."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Cloud, agent_pids

NANO = ("--image", "tiny", "--type", "t1.nano")
KEPT = ("id", "private_ip", "public_ip", "fqdn", "security_groups")


def _until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.3)


def _disks(c: Cloud, host: str, iid: str) -> list[Path]:
    return list(c.state_dir.glob(f"hosts/{host}/**/{iid}/disk.qcow2"))


def test_evacuate_a_frozen_host(fake_cloud_3: Cloud) -> None:
    c = fake_cloud_3
    running = c.json("instance", "create", "evac-1", *NANO, "--wait")
    old = running["host"]
    [other] = {"local", "local-3"} - {old}  # local-1a's two hosts
    # Two volumes of evac-1, one stored on each host of the zone (the fewest GiB first): the
    # one on the host that goes down stays there, the other follows the instance.
    stored = {}
    for name in ("ev-a", "ev-b"):
        vol = c.json("volume", "create", name, "--size", "1", "--zone", "local-1a", "--wait")
        c.json("volume", "attach", name, "evac-1", "--wait")
        stored[name] = next(h for h in (old, other)
                            if (c.state_dir / "hosts" / h / "volumes" / f"{vol['id']}.qcow2")
                            .is_file())
    [left] = [n for n, h in stored.items() if h == old]
    [follows] = [n for n, h in stored.items() if h == other]
    c.json("host", "disable", other)  # the second one on the same host
    stopped = c.json("instance", "create", "evac-2", *NANO, "--wait")
    assert stopped["host"] == old
    c.json("instance", "stop", "evac-2")
    c.wait_state("evac-2", "stopped", timeout=30)
    c.json("host", "enable", other)
    assert _disks(c, old, running["id"])
    agent = int((c.state_dir / "hosts" / old / "agent.lock").read_text().strip())
    assert agent in agent_pids(c.state_dir)

    r = c.cli("host", "evacuate", old, check=False)
    assert (r.returncode, r.stderr.split(":")[0]) == (1, "error[host_up]")
    os.kill(agent, signal.SIGSTOP)
    try:
        _until(f"{old} down", lambda: not c.json("host", "show", old)["alive"], 15 + 10)
        r = c.cli("host", "evacuate", old)
        assert "evac-1" in r.stdout and "evac-2" in r.stdout and r.stderr == ""
        assert "note: boot disks are not recovered" in r.stdout
        assert (f"evac-1: boot disk recreated from image tiny; volumes {follows} attached "
                f"again; volumes {left} left detached") in r.stdout
        moved = c.wait_state("evac-1", "running", timeout=60)
        assert moved["host"] == other
        _until(f"{follows} attached again", lambda: c.json("volume", "show", follows)["state"]
               == "in-use", 30)
        assert c.json("volume", "show", follows)["attached_to"] == "evac-1"
        assert f"its storage host {old} is down" in c.json(
            "volume", "show", left)["state_reason"]
        assert {k: moved[k] for k in KEPT} == {k: running[k] for k in KEPT}
        after = c.json("instance", "show", "evac-2")
        assert (after["host"], after["state"]) == (other, "stopped")
        assert {k: after[k] for k in KEPT} == {k: stopped[k] for k in KEPT}
        [event] = [e for e in c.json("instance", "events", "evac-1")
                   if e["kind"] == "evacuated"]
        assert f"from {old} to {other}: evacuated from a down host; boot disk recreated " \
               f"from image tiny; volumes {follows} attached again" in event["detail"]
        assert _disks(c, other, running["id"])  # a new boot disk, from the image
    finally:
        os.kill(agent, signal.SIGCONT)
    # The old host is back (disabled until an operator enables it): it removes its copy.
    _until(f"{old} up", lambda: c.json("host", "show", old)["alive"], 30)
    _until("the old copy removed", lambda: not _disks(c, old, running["id"]), 30)
    assert c.json("host", "show", old)["state"] == "disabled"
    shown = c.json("instance", "show", "evac-1")
    assert (shown["host"], shown["state"]) == (other, "running")
    assert sorted(m["state"] for m in c.json("migration", "list")) == ["evacuated"] * 2
    # The volume it stored, let go, is the project's to attach again.
    _until(f"{left} available", lambda: c.json("volume", "show", left)["state"]
           == "available", 30)
    assert c.json("volume", "show", left)["attached_to"] is None
