"""`cumulo up --hosts 3` with real VMs (TCG): an instance on each simulated host, in both
zones and both architectures, each reached by SSH at its public IP; `cumulo down` leaves no
namespace, link or process of any host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cumulo.agent.net.names import netns_name
from cumulo.allinone.fabric import fabric_netns
from tests.integration.conftest import Cloud, agent_pids, qemu_pids
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu

HOSTS = ("local", "local-2", "local-3")


def test_an_instance_on_each_host_reached_by_ssh_and_down_leaves_nothing(
        qemu_cloud_3: Cloud) -> None:
    c = qemu_cloud_3
    c.json("keypair", "create", "k")
    placed = {}
    for name, zone, arch in (("a-x86", "local-1a", "x86_64"), ("a-arm", "local-1a", "arm64"),
                             ("b-x86", "local-1b", "x86_64")):
        vm = c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano",
                    "--arch", arch, "--zone", zone, "--key", "k", "--wait")
        assert (vm["state"], vm["zone"]) == ("running", zone)
        placed[name] = vm["host"]
    assert sorted(placed.values()) == sorted(HOSTS), placed  # one on each host
    for name, host in placed.items():
        wait_ssh(c, name, timeout=300)
        assert ssh(c, name, "hostname").stdout.strip() == name
        # Each VM runs in its own host's namespace, from its own host's files.
        (pid,) = [pid for vm_id, pid in qemu_pids(c.state_dir).items()
                  if vm_id == c.json("instance", "show", name)["id"]]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert str(c.state_dir / "hosts" / host).encode() in cmd
    namespaces = {fabric_netns(c.state_dir)} | {netns_name(c.state_dir / "hosts" / h)
                                                for h in HOSTS}

    c.stop()
    c.cli("down", "--state-dir", str(c.state_dir))
    assert qemu_pids(c.state_dir) == {} and agent_pids(c.state_dir) == set()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in namespaces if n in listed]
    dnsmasq = subprocess.run(["pgrep", "-af", "dnsmasq"], capture_output=True, text=True).stdout
    assert str(c.state_dir) not in dnsmasq
