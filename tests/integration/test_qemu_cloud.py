"""Real QEMU VMs (TCG) through the whole stack: `cumulo up`, CLI, agent, QEMU driver."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.integration.conftest import (
    Cloud,
    qemu_pids,
    wait_agents_gone,
    wait_one_agent,
)

pytestmark = pytest.mark.qemu

READY = "cumulo-tiny: ready hostname={name}"


def wait_console(cloud: Cloud, name: str, pattern: str, timeout: float = 120,
                 count: int = 1) -> str:
    deadline = time.monotonic() + timeout
    text: str = ""  # the console's text (cloud.get answers a text body as text)
    while time.monotonic() < deadline:
        text = cloud.get("/v1/instances/{}/console", name)
        if len(re.findall(re.escape(pattern), text)) >= count:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} x{count} not on {name}'s console:\n{text[-2000:]}")


def test_x86_64_and_arm64_lifecycle(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    script = c.state_dir / "user-data.sh"
    script.write_text("#!/bin/sh\necho user-data-ran-on-$(hostname)\n")
    for name, arch in (("vm-x86", "x86_64"), ("vm-arm", "arm64")):
        vm = c.json("instance", "create", name, "--image", "tiny", "--arch", arch,
                    "--type", "t1.nano", "--user-data", str(script), "--wait")
        assert (vm["state"], vm["arch"], vm["ram_mib"]) == ("running", arch, 128)
    for name in ("vm-x86", "vm-arm"):
        wait_console(c, name, READY.format(name=name), timeout=180)
        wait_console(c, name, f"user-data-ran-on-{name}")
    pids = qemu_pids(c.state_dir)
    assert len(pids) == 2
    for pid in pids.values():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        assert str(c.state_dir).encode() in cmdline and b"tcg" in cmdline

    # stop is an ACPI power-off the guest obeys (well before the forced-stop timeout)
    t0 = time.monotonic()
    vm = c.json("instance", "stop", "vm-x86", "--wait")
    assert vm["state"] == "stopped" and "force" not in vm["state_reason"]
    assert time.monotonic() - t0 < 20
    assert len(qemu_pids(c.state_dir)) == 1

    assert c.json("instance", "start", "vm-x86", "--wait")["state"] == "running"
    wait_console(c, "vm-x86", READY.format(name="vm-x86"), count=2, timeout=180)

    c.json("instance", "reboot", "vm-arm", "--wait")
    wait_console(c, "vm-arm", READY.format(name="vm-arm"), count=2, timeout=180)

    ids = {i["name"]: i["id"] for i in c.json("instance", "list")}
    for name in ("vm-x86", "vm-arm"):
        c.cli("instance", "delete", name, "--wait")
    assert qemu_pids(c.state_dir) == {}
    for vm_id in ids.values():
        assert not list(c.state_dir.glob(f"hosts/*/instances/{vm_id}"))


def test_control_plane_restart_keeps_vms_and_crash_is_noticed(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    c.json("instance", "create", "keeper", "--image", "tiny", "--type", "t1.nano", "--wait")
    wait_console(c, "keeper", READY.format(name="keeper"), timeout=180)
    (vm_id, pid), = qemu_pids(c.state_dir).items()

    c.stop()  # SIGTERM to `cumulo up`: API and agent stop, the VM does not
    time.sleep(1)
    assert qemu_pids(c.state_dir) == {vm_id: pid}

    c.start()
    vm = c.wait_state("keeper", "running", timeout=30)
    assert qemu_pids(c.state_dir) == {vm_id: pid}, "the VM was re-adopted, not restarted"
    assert READY.format(name="keeper") in c.cli("instance", "console-log", "keeper").stdout
    assert vm["id"] == vm_id

    # The same after `cumulo up` is killed outright: its agent stops with it (else the next
    # `cumulo up` would run a second one on this host), and the VM does not.
    agent = wait_one_agent(c.state_dir, timeout=10)
    c.kill()
    wait_agents_gone({agent}, c.state_dir, timeout=10)
    assert qemu_pids(c.state_dir) == {vm_id: pid}
    c.start()
    assert wait_one_agent(c.state_dir, timeout=10) != agent
    assert c.wait_state("keeper", "running", timeout=30)["id"] == vm_id
    time.sleep(3)  # a few of the new agent's passes (one each OBSERVE_S = 2 s)
    assert qemu_pids(c.state_dir) == {vm_id: pid}, "the VM was re-adopted, not restarted"

    os.kill(pid, signal.SIGKILL)  # behind cumulo's back
    t0 = time.monotonic()
    vm = c.wait_state("keeper", "error", timeout=5)
    assert time.monotonic() - t0 <= 5
    assert "unexpectedly" in vm["state_reason"]

    # the user recovers it with start
    assert c.json("instance", "start", "keeper", "--wait")["state"] == "running"


def test_down_then_up_restores_desired_state(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    c.json("instance", "create", "runner", "--image", "tiny", "--type", "t1.nano", "--wait")
    c.json("instance", "create", "sleeper", "--image", "tiny", "--arch", "arm64",
           "--type", "t1.nano", "--wait")
    c.json("instance", "stop", "sleeper", "--wait")
    c.stop()
    c.cli("down", "--state-dir", str(c.state_dir))
    assert qemu_pids(c.state_dir) == {}
    assert list(c.state_dir.glob("hosts/*/instances/*/disk.qcow2")), "disks are kept"

    c.start()
    c.wait_state("runner", "running", timeout=60)
    wait_console(c, "runner", READY.format(name="runner"), count=2, timeout=180)
    time.sleep(2)
    assert c.json("instance", "show", "sleeper")["state"] == "stopped"
    assert len(qemu_pids(c.state_dir)) == 1
