"""A bare-metal node end to end as far as it is built: `cumulo up` (its API process runs the
conductor), the CLI, and a "physical" server that is a real QEMU machine behind the Redfish
BMC emulator in its own process. Enrolled with a password file, inspected over Redfish, made
available; powered on, off and rebooted over Redfish (the QEMU process appears and goes);
deleted (powered off first); and a BMC that does not answer leaves `error` with the reason.
With `cumulo up --baremetal-nodes 1`, a bm1.* instance is deployed on its node from virtual
media for real (the tiny image, booted from the node's own disk, with its NoCloud seed on a
partition the deploy added: hostname, key, user-data), stopped and started over Redfish, seen
stopped and running again when its power changes outside cumulo, and its delete cleans it
(the deploy ramdisk in wipe mode zeroes its disk's ends, the seed too).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.resolver
import pytest

from cumulo.agent.net.names import netns_name, port_tap_name
from cumulo.baremetal import switch_port
from cumulo.baremetal.emulated_machine import MachineSpec
from cumulo.baremetal.redfish import Bmc, BmcAddress, PowerAction
from cumulo.domain.netaddr import public_dns_address
from tests.baremetal_support import PASSWORD, USER, bmc_process
from tests.conftest import free_port, running
from tests.integration.conftest import Cloud, _make
from tests.integration.test_many_hosts_qemu import by_fqdn

pytestmark = pytest.mark.qemu

SPEC = MachineSpec("srv-1", vcpus=1, ram_mib=128, disk_gib=1)


def _wait_node(c: Cloud, name: str, state: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    node: dict[str, Any] = {}
    while time.monotonic() < deadline:
        node = c.json("baremetal", "node", "show", name)
        if node["state"] == state:
            return node
        time.sleep(0.5)
    raise AssertionError(f"node {name} not {state} after {timeout}s: {node}\n"
                         f"{c.log.read_text()[-3000:]}")


def _wait_console(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = log.read_text(errors="replace") if log.exists() else ""
        if text in seen:
            return seen
        time.sleep(1)
    raise AssertionError(f"{text!r} not on the node's console after {timeout}s:\n{seen[-3000:]}")


@pytest.fixture
def media_url(tmp_path: Path) -> Iterator[str]:
    """An "ISO" served over HTTP on loopback, for the BMC to fetch as virtual media."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "deploy.iso").write_bytes(b"CD001" + bytes(64 * 1024))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/deploy.iso"
    finally:
        server.shutdown()
        server.server_close()


def test_enroll_inspect_power_and_delete_a_node(fake_cloud: Cloud, tmp_path: Path,
                                                media_url: str) -> None:
    c = fake_cloud
    with bmc_process(tmp_path / "bmc", SPEC) as bmc:
        machine = bmc.machines[SPEC.system_id]
        pw = tmp_path / "pw"
        pw.write_text(PASSWORD + "\n")
        enrolled = c.cli("-o", "json", "baremetal", "node", "enroll", "bm-1", "--zone",
                         "local-1a", "--redfish", bmc.url, "--system", SPEC.system_id,
                         "--username", USER, "--password-file", str(pw), "--arch", "x86_64",
                         "--vcpus", "1", "--ram", "128", "--disk", "1")
        assert PASSWORD not in enrolled.stdout + enrolled.stderr
        assert json.loads(enrolled.stdout)["state"] == "enroll"

        node = _wait_node(c, "bm-1", "available")
        assert node["facts"] == {"arch": "x86_64", "vcpus": 1, "ram_mib": 128, "disk_gib": 1}
        assert (node["power_state"], node["last_error"], node["instance"]) == ("off", None, None)
        assert machine.pid() is None  # inspection reads; it does not power anything on

        # Power actions over Redfish, as the conductor will drive them: the QEMU is real.
        b = Bmc(BmcAddress(bmc.url, f"/redfish/v1/Systems/{SPEC.system_id}", USER, PASSWORD))
        b.insert_media(media_url)
        b.set_boot("cd", once=True)
        assert b.power(PowerAction.ON) == "on"
        pid = machine.pid()
        assert pid is not None and running(pid)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"qemu-system-x86_64" in argv[0] and b"128" in argv and b"order=d" in argv
        assert any(b"media=cdrom" in a and b"media.iso" in a for a in argv)
        assert machine.media.read_bytes()[:5] == b"CD001"  # fetched by the BMC
        assert b.power(PowerAction.ON) == "on" and machine.pid() == pid  # idempotent

        assert b.power(PowerAction.OFF) == "off"
        assert not running(pid) and machine.pid() is None
        b.eject_media()
        assert b.power(PowerAction.REBOOT) == "on"  # from off: powers on, from the disk now
        rebooted = machine.pid()
        assert rebooted is not None and rebooted != pid
        argv = Path(f"/proc/{rebooted}/cmdline").read_bytes().split(b"\0")
        assert b"order=c" in argv and not any(b"media=cdrom" in a for a in argv)

        # Delete: the conductor powers the machine off before it forgets the node.
        c.cli("baremetal", "node", "delete", "bm-1")
        deadline = time.monotonic() + 90
        while c.json("baremetal", "node", "list") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.json("baremetal", "node", "list") == []
        assert not running(rebooted) and machine.pid() is None

    # A BMC that does not answer: error, with the reason, for the operator to see.
    silent = f"http://127.0.0.1:{free_port()}"
    c.cli("baremetal", "node", "enroll", "bm-2", "--zone", "local-1a", "--redfish", silent,
          "--system", "1", "--arch", "x86_64", "--vcpus", "1", "--ram", "128", "--disk", "1")
    node = _wait_node(c, "bm-2", "error")
    assert node["last_error"] == f"the BMC at {silent} did not answer (read the power state): " \
                                 "connection refused"
    listed = c.cli("baremetal", "node", "list").stdout
    assert "bm-2" in listed and "error" in listed
    # The operator's retry: enroll again; the BMC is still silent, so error again.
    assert c.cli("baremetal", "node", "retry", "bm-2").stdout.strip() == \
        "bare-metal node bm-2 is enroll again"
    assert _wait_node(c, "bm-2", "error")["last_error"] == node["last_error"]


def _reached_on_its_network(c: Cloud, ns: str, made: dict[str, Any], mac: str) -> None:
    """The deployed server is on its project's network like a VM: its DHCP lease from the
    network's dnsmasq (the lease file), echo replies and its SSH port on its private IP from
    the host's namespace, and echo replies and its SSH port at its public IP through the
    edge (its security group, the default, lets ICMP and SSH in), its FQDN answered by the
    edge's DNS with that address."""
    ip, public = made["private_ip"], made["public_ip"]
    assert ip and public and made["network"] == "default", made
    leases = c.state_dir / "hosts" / "local" / "net" / "dnsmasq"
    deadline = time.monotonic() + 120
    while not any(f"{mac} {ip} " in f.read_text() for f in leases.glob("*/leases")):
        assert time.monotonic() < deadline, f"no DHCP lease of {ip} to {mac}"
        time.sleep(1)
    deadline = time.monotonic() + 60
    while _in_netns(ns, "busybox", "ping", "-c", "1", "-W", "2", ip).returncode != 0:
        assert time.monotonic() < deadline, f"no echo reply from {ip}"
    banner = _in_netns(ns, sys.executable, "-c", _BANNER, ip)
    assert banner.stdout.startswith("SSH-2.0-dropbear"), banner.stdout + banner.stderr
    deadline = time.monotonic() + 60  # the edge learns the entry at its next long-poll
    while subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", public],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"no echo reply at {public}"
    banner = subprocess.run([sys.executable, "-c", _BANNER, public], capture_output=True,
                            text=True, timeout=30)
    assert banner.stdout.startswith("SSH-2.0-dropbear"), banner.stdout + banner.stderr
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [public_dns_address(tomllib.loads(c.config)["network"]
                                               ["public_pool"])]
    answer = resolver.resolve(made["fqdn"], "A", lifetime=10)
    assert [a.to_text() for a in answer] == [public]


# The first bytes a TCP connection to port 22 of argv[1] gets (the SSH server's banner).
_BANNER = ("import socket, sys; s = socket.create_connection((sys.argv[1], 22), 10); "
           "print(s.recv(64).decode(errors='replace'))")


def _in_netns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def lab_cloud() -> Iterator[Cloud]:
    # The QEMU driver: its host's agent runs the data plane the node's NIC is plugged into
    # (no VM is started on it).
    for cloud in _make("qemu", ["--baremetal-nodes", "1"]):
        cloud.start()
        yield cloud


def test_up_with_baremetal_nodes_runs_and_enrolls_them(lab_cloud: Cloud) -> None:
    c = lab_cloud
    node = _wait_node(c, "bm-1", "available")
    mac = switch_port.mac_of("node-1")  # read over Redfish (EthernetInterfaces)
    assert node["facts"] == {"arch": "x86_64", "vcpus": 1, "ram_mib": 256, "disk_gib": 2}
    assert (node["mac"], node["port_host"]) == (mac, "local")  # cabled to the first host
    lab = c.state_dir / "baremetal"
    ns = netns_name(c.state_dir / "hosts" / "local")  # the host the node is cabled to
    password = (lab / "bmc-password").read_text().strip()
    b = Bmc(BmcAddress(node["redfish_url"], node["redfish_system"], "admin", password))

    # A bm1 instance is deployed on the node for real: the conductor inserts the deploy ISO
    # (the emulator fetches it from the API), the node boots it from CD, its ramdisk fetches
    # the whole-disk image over the provisioning NIC, checks and writes it and reports; the
    # conductor ejects the media and boots the node from its disk. A second create finds no
    # node; deleting the instance cleans the node: its machine goes off for real.
    c.json("keypair", "create", "k1")
    script = c.state_dir / "user-data.sh"
    script.write_text("#!/bin/sh\necho \"metal user-data: $(hostname -f)\"\n")
    made = c.json("instance", "create", "metal", "--image", "tiny", "--type", "bm1.tiny",
                  "--key", "k1", "--user-data", str(script), "--wait", "--timeout", "600")
    assert (made["state"], made["type"], made["state_reason"]) == ("running", "bm1.tiny", "")
    node = c.json("baremetal", "node", "show", "bm-1")
    assert (node["state"], node["instance"], node["power_state"], node["last_error"],
            node["deploy_step"]) == ("active", "metal", "on", None, None)
    machine = lab / "node-1"
    assert json.loads((machine / "state.json").read_text())["media_image"] == ""  # ejected
    argv = json.loads((machine / "last-argv.json").read_text())
    assert "order=c" in " ".join(argv) and not any("media=cdrom" in a for a in argv)
    # The network flip: booted from its disk, its NIC is on its switch port (a tap in the
    # host's namespace), no longer on the provisioning network.
    assert "tap,id=nic,fd=" in " ".join(argv) and "restrict=on" not in " ".join(argv)
    # The console (the emulator keeps it, truncated at each power-on) shows the tiny image
    # booted by SYSLINUX from the node's own disk, its root on the partition the deploy wrote.
    console = _wait_console(machine / "console.log", "metal user-data: ", 240)
    assert "SYSLINUX" in console and "switching to /dev/vda2" in console
    # Its NoCloud seed, which the deploy ramdisk fetched and wrote to a partition it added at
    # the disk's end: found there, the hostname and FQDN set, the key installed, the
    # user-data run.
    assert "cumulo-tiny: seed found on /dev/vda3" in console
    assert "cumulo-tiny: installed 1 ssh key(s)" in console
    assert "cumulo-tiny: ready hostname=metal instance-id=" + made["id"] in console
    assert f"metal user-data: {made['fqdn']}" in console
    # Its console is the BMC's serial console, which cumulo does not relay: said plainly.
    refused = c.cli("instance", "console-log", "metal", check=False)
    assert refused.returncode != 0
    assert refused.stderr.startswith("error[baremetal_no_console]: instance 'metal' is a ")
    deployed = " ".join(e["kind"] for e in c.json("instance", "events", "metal"))
    assert "started" in deployed
    _reached_on_its_network(c, ns, made, mac)
    # Logged in with its seed's key, at its public IP (`cumulo ssh`) and at its FQDN.
    assert c.cli("ssh", "metal", "--", "hostname").stdout.strip() == "metal"
    by_name = by_fqdn(c, made["fqdn"], "hostname -f", key="k1")
    assert by_name.stdout.strip() == made["fqdn"], by_name.stdout + by_name.stderr
    # Stop and start are the conductor's Redfish power actions: the stop presses the power
    # button (GracefulShutdown) and the tiny OS powers itself off; the start powers the
    # machine on (its second boot is not awaited: the deploy's showed that it boots).
    pid = int((machine / "qemu.pid").read_text())
    stopped = c.json("instance", "stop", "metal", "--wait", "--timeout", "120")
    assert (stopped["state"], stopped["state_reason"]) == ("stopped", "")
    assert not running(pid) and b.power_state() == "off"
    assert "power button pressed, powering off" in (machine / "console.log").read_text(
        errors="replace")
    started = c.json("instance", "start", "metal", "--wait", "--timeout", "120")
    assert (started["state"], b.power_state()) == ("running", "on")
    assert running(int((machine / "qemu.pid").read_text()))
    # Power changed outside cumulo (at the BMC here; an OS's `poweroff` looks the same over
    # Redfish): the conductor's power sync shows it within seconds, as a guest's stop.
    assert b.power(PowerAction.OFF) == "off"
    assert c.wait_state("metal", "stopped", 60)["state_reason"].startswith(
        "the server powered off without a request")
    assert [(e["kind"], e["actor"]) for e in c.json("instance", "events", "metal")][-1] == (
        "stopped", "guest")
    assert b.power(PowerAction.ON) == "on"
    c.wait_state("metal", "running", 60)
    refused = c.cli("instance", "create", "metal-2", "--image", "tiny", "--type", "bm1.tiny",
                    check=False)
    assert refused.returncode != 0 and refused.stderr.startswith("error[no_node_fits]: ")
    assert "1 active" in refused.stderr
    pid = int((machine / "qemu.pid").read_text())
    assert running(pid)
    # The delete cleans the node: the deploy ISO again, in wipe mode, zeroes the start and the
    # end of the node's disk (the boot loader the tenant's system came up from is gone, and
    # the seed's partition with the tenant's keys and user-data: it lies in the last 4 MiB).
    c.cli("instance", "delete", "metal")
    node = _wait_node(c, "bm-1", "available", timeout=240)
    assert (node["instance"], node["power_state"], node["last_error"]) == (None, "off", None)
    assert not running(pid) and c.json("instance", "list") == []
    assert "cumulo-deploy: wiped the first and last 4 MiB of /dev/vda" in (
        machine / "console.log").read_text(errors="replace")
    read = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0 0 4M",
                           "-c", "read -P 0 2044M 4M", str(machine / "disk.qcow2")],
                          capture_output=True, text=True, check=False)
    assert read.returncode == 0 and "fail" not in read.stdout.lower(), read.stdout + read.stderr

    assert b.power(PowerAction.ON) == "on"
    pid = int((lab / "node-1" / "qemu.pid").read_text())
    assert running(pid)
    # Its tap is back (the machine runs from its disk), but the node has no instance: its
    # port host leaves it on no bridge.
    tap = json.loads(_in_netns(ns, "ip", "-j", "link", "show", port_tap_name(mac)).stdout)
    assert tap and "master" not in tap[0], tap

    # A restart keeps the node (no second enrollment) and its BMC's address.
    c.stop()  # the emulator goes with `cumulo up`, and powers its machine off
    assert not running(pid)
    c.start()
    assert [n["name"] for n in c.json("baremetal", "node", "list")] == ["bm-1"]
    assert b.power_state() == "off"

    # `cumulo down` after a `cumulo up` killed hard: the emulator goes too (the kernel
    # signals it), and no machine is left running.
    assert b.power(PowerAction.ON) == "on"
    pid = int((lab / "node-1" / "qemu.pid").read_text())
    c.kill()
    c.cli("down", "--state-dir", str(c.state_dir))
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(pid)
