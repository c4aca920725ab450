"""`cumulo host drain` and `cumulo host evacuate` with real VMs (TCG) on `cumulo up --hosts 2`
(one zone, placement packing the instances onto one host).

Drain: of three instances, two running ones move live and a stopped one moves cold (its disk
copied over the underlay and checked, nothing started), the drained host holds nothing of any
after (no QEMU, no disk), the running ones are the same guests (boot id), and the stopped
one, started on its new host, boots from the moved disk (a file written and synced before has
the same checksum).

Evacuate: a host dies (its agent frozen, its VM's QEMU killed); once the API sees it down, its
instance is restarted on the other host from its image (a new boot: the boot disk died with
the host) with the same addresses and name, reachable by SSH; when the dead host's agent comes
back it removes its stale copy."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Cloud, _make, qemu_pids
from tests.integration.test_live_migration_qemu import ONE_ZONE, _vm_files
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for c in _make("qemu", ["--hosts", "2"]):
        (c.state_dir / "cumulo.toml").write_text('placement_policy = "pack"\n' + c.config
                                                 + ONE_ZONE)
        c.start()
        yield c


def test_drain_moves_running_instances_live_and_a_stopped_one_cold(cloud: Cloud) -> None:
    c = cloud
    c.json("keypair", "create", "k")
    made = {name: c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano",
                         "--key", "k") for name in ("live", "live-2", "cold")}
    for name in made:
        wait_ssh(c, name, timeout=300)
    shown = {name: c.json("instance", "show", name) for name in made}
    (source,) = {v["host"] for v in shown.values()}  # packed onto one host
    (dest,) = {h["name"] for h in c.json("host", "list")} - {source}
    md5 = ssh(c, "cold", "sh", "-c", "'dd if=/dev/urandom of=$HOME/f bs=1024 count=2048 "
              "2>/dev/null; sync; md5sum $HOME/f'").stdout.split()[0]
    boot_id = ssh(c, "live", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    c.json("instance", "stop", "cold", "--wait")

    drained = c.json("host", "drain", source, "--wait")
    moves = {m["instance"]: m for m in drained["migrations"]}
    assert drained["unmoved"] == [], drained
    assert {n: (m["state"], m["cold"], m["destination"]) for n, m in moves.items()} == {
        "live": ("completed", False, dest), "live-2": ("completed", False, dest),
        "cold": ("completed", True, dest)}, moves
    assert moves["cold"]["downtime_ms"] is None and moves["live"]["downtime_ms"] is not None
    for name, before in shown.items():
        after = c.json("instance", "show", name)
        assert after["host"] == dest and after["id"] == before["id"], after
        assert after["private_ip"] == before["private_ip"]
        assert _vm_files(c, source, before["id"]) == []  # nothing left on the drained host
    assert c.json("instance", "show", "cold")["state"] == "stopped"
    assert _vm_files(c, dest, shown["cold"]["id"]) == ["disk"]  # moved, not started
    assert ssh(c, "live", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip() == boot_id
    events = c.json("instance", "events", "cold")
    assert any(e["kind"] == "migrated" and "its disk copied and checked" in e["detail"]
               for e in events), events

    c.json("instance", "start", "cold", "--wait")
    wait_ssh(c, "cold", timeout=300)
    assert ssh(c, "cold", "md5sum", "$HOME/f").stdout.split()[0] == md5
    assert c.json("host", "show", source)["state"] == "disabled"
    c.cli("host", "enable", source)


def test_evacuate_restarts_a_dead_host_s_instance_on_the_other(cloud: Cloud) -> None:
    c = cloud
    hosts = sorted(h["name"] for h in c.json("host", "list"))
    busy = c.json("instance", "show", "live")["host"]  # the drain's destination
    (dead,) = set(hosts) - {busy}
    c.cli("host", "disable", busy)  # so that the new instance lands on the host that dies
    try:
        vm = c.json("instance", "create", "evac", "--image", "tiny", "--type", "t1.nano",
                    "--key", "k")
    finally:
        c.cli("host", "enable", busy)
    assert vm["host"] == dead
    wait_ssh(c, "evac", timeout=300)
    boot_id = ssh(c, "evac", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()

    agent = int((c.state_dir / "hosts" / dead / "agent.lock").read_text().strip())
    os.kill(agent, signal.SIGSTOP)  # the host dies: its agent is silent, its VM gone
    try:
        os.kill(qemu_pids(c.state_dir)[vm["id"]], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while c.json("host", "show", dead)["alive"]:
            assert time.monotonic() < deadline, f"{dead} still alive"
            time.sleep(0.5)
        out = c.cli("host", "evacuate", dead).stdout
        assert "evac" in out and "boot disks are not recovered" in out, out
        moved = c.wait_state("evac", "running", timeout=300)
        assert moved["host"] == busy
        for key in ("id", "private_ip", "public_ip", "fqdn"):
            assert moved[key] == vm[key], key
        wait_ssh(c, "evac", timeout=300)
        assert ssh(c, "evac", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip() \
            != boot_id  # restarted from its image, not moved
        assert any(e["kind"] == "evacuated" for e in c.json("instance", "events", "evac"))
    finally:
        os.kill(agent, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while _vm_files(c, dead, vm["id"]):
        assert time.monotonic() < deadline, _vm_files(c, dead, vm["id"])
        time.sleep(1)
