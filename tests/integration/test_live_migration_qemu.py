"""Live migration with real VMs (TCG) on `cumulo up --hosts 2` (one zone, two hosts): a
running instance streaming a counter over TCP through its public IP (the edge: a client on
the machine, this test, reads it from 127.100.0.N) moves to the other host; the stream goes
on without a gap and without a new connection, a file written and synced
before has the same checksum after, the guest is not rebooted (same boot id, uptime goes
on), and `migration show` says completed with QEMU's downtime. Then a migration cancelled
once the destination is ready leaves the instance running where it was and nothing on the
destination (no QEMU, no disk)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running
from tests.integration.conftest import Cloud, _make
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu

ONE_ZONE = '[[regions]]\nname = "local-1"\nzones = ["local-1a"]\n'
PORT = 5001


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for c in _make("qemu", ["--hosts", "2"]):
        (c.state_dir / "cumulo.toml").write_text(c.config + ONE_ZONE)
        c.start()
        yield c


class Reader:
    """One TCP connection to the instance's public address, read in a thread: the lines it
    brought, the longest wait between two reads, and whether it ended."""

    def __init__(self, ip: str, port: int) -> None:
        self.sock = socket.create_connection((ip, port), timeout=10)
        self.sock.settimeout(None)
        self.data = bytearray()
        self.longest_gap = 0.0
        self.ended: str | None = None
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self.sock.recv(4096):
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - self._last)
                self._last = now
                self.data += chunk
            self.ended = "closed by the other end"
        except OSError as e:
            self.ended = str(e)

    def lines(self) -> list[str]:
        return bytes(self.data).decode().split("\n")[:-1]

    def close(self) -> None:
        self.sock.close()


def _guest(c: Cloud) -> dict[str, str]:
    out = ssh(c, "vm", "sh", "-c", "'cat /proc/sys/kernel/random/boot_id; cut -d\" \" -f1 "
              "/proc/uptime; cat /sys/class/net/eth0/address; md5sum $HOME/f'").stdout
    boot_id, uptime, mac, md5 = out.split()[:4]
    return {"boot_id": boot_id, "uptime": uptime, "mac": mac, "md5": md5}


def _vm_files(c: Cloud, host: str, vm_id: str) -> list[str]:
    """What the host holds of the VM: a live QEMU, its disk."""
    hdir = c.state_dir / "hosts" / host
    found = []
    pidfile = hdir / "run" / vm_id / "qemu.pid"
    if pidfile.exists() and running(int(pidfile.read_text().strip() or 0)):
        found.append("qemu")
    if (hdir / "instances" / vm_id / "disk.qcow2").exists():
        found.append("disk")
    return found


def _agent_pid(c: Cloud, host: str) -> int:
    """The pid of the agent of `host` (its command line names its config file)."""
    config = str(c.state_dir / "hosts" / host / "agent.json").encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"cumulo.agent" in cmd and config in cmd:
                return int(proc.name)
    raise AssertionError(f"no agent for host {host}")


def _wait(what: str, check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_running_instance_moves_live_and_a_cancel_leaves_it_where_it_was(
        cloud: Cloud) -> None:
    c = cloud
    c.json("keypair", "create", "k")
    c.cli("security-group", "rule-add", "default", "--proto", "tcp", "--port", str(PORT))
    vm = c.json("instance", "create", "vm", "--image", "tiny", "--type", "t1.nano", "--key",
                "k", "--wait")
    wait_ssh(c, "vm", timeout=300)
    source = vm["host"]
    (dest,) = {h["name"] for h in c.json("host", "list")} - {source}

    # A counter streamed over one TCP connection from vm, through its public IP, to this
    # test; and a synced file.
    ssh(c, "vm", "sh", "-c", "'dd if=/dev/urandom of=$HOME/f bs=1024 count=4096 "
        "2>/dev/null; sync'")
    ssh(c, "vm", "sh", "-c", f"'(i=0; while :; do echo $i; i=$((i+1)); usleep 100000; done"
        f" | nc -l -p {PORT} >/dev/null 2>&1 &)'")
    stream = Reader(vm["public_ip"], PORT)
    _wait("no stream", lambda: len(stream.lines()) >= 10, timeout=60)
    before = _guest(c)
    gap_before = stream.longest_gap

    mig = c.json("instance", "migrate", "vm", "--wait")
    assert (mig["state"], mig["source"], mig["destination"]) == ("completed", source, dest), mig
    assert mig["downtime_ms"] is not None and mig["total_s"] is not None, mig
    at_switch = len(stream.lines())
    shown = c.json("migration", "show", mig["id"])
    assert shown["state"] == "completed" and shown["downtime_ms"] == mig["downtime_ms"]

    moved = c.json("instance", "show", "vm")
    assert moved["host"] == dest and moved["state"] == "running"
    for key in ("id", "private_ip", "public_ip", "fqdn"):
        assert moved[key] == vm[key], key
    assert _vm_files(c, source, vm["id"]) == []  # the source removed its copy
    _wait("the stream stopped after the switch-over",
          lambda: len(stream.lines()) > at_switch + 20, timeout=60)
    after = _guest(c)
    assert (after["boot_id"], after["mac"], after["md5"]) == (
        before["boot_id"], before["mac"], before["md5"])
    assert float(after["uptime"]) > float(before["uptime"])
    numbers = [int(n) for n in stream.lines()]
    assert numbers == list(range(len(numbers))), "a gap or a restart in the counter"
    # One connection all along: still open (the guest's nc serves one connection only).
    assert stream.ended is None, stream.ended
    print(f"stream through the public IP: longest gap {stream.longest_gap * 1000:.0f} ms "
          f"(before the migration {gap_before * 1000:.0f} ms), QEMU downtime "
          f"{mig['downtime_ms']} ms")
    events = c.json("instance", "events", "vm")
    assert any(e["kind"] == "migrated" and mig["id"] in e["detail"] for e in events)

    # Back towards the first host, cancelled once the destination waits for the VM. The
    # copy of an idle tiny guest takes about a second: the source's agent is held (SIGSTOP)
    # meanwhile, so that the cancel surely comes before the switch-over (a cancel that comes
    # after it is refused, or the migration completes: never both hosts running the guest).
    agent = _agent_pid(c, dest)
    os.kill(agent, signal.SIGSTOP)
    try:
        back = c.json("instance", "migrate", "vm", "--to", source)
        _wait("the destination never prepared", lambda: "qemu" in _vm_files(
            c, source, vm["id"]) and c.json("migration", "show", back["id"])["state"]
            == "copying-disks", timeout=60)
        cancelled = c.json("migration", "cancel", back["id"])
    finally:
        os.kill(agent, signal.SIGCONT)
    assert cancelled["state"] == "cancelled", cancelled
    _wait("the destination kept the VM", lambda: _vm_files(c, source, vm["id"]) == [])
    assert _vm_files(c, dest, vm["id"]) == ["qemu", "disk"]
    assert c.json("instance", "show", "vm")["host"] == dest
    assert _guest(c)["boot_id"] == before["boot_id"]
    shown = c.json("migration", "show", back["id"])
    assert (shown["state"], shown["reason"]) == ("cancelled", "cancelled by an administrator")
    grown = len(stream.lines())
    _wait("the stream stopped after the cancel", lambda: len(stream.lines()) > grown + 10, 60)
    assert stream.ended is None, stream.ended
    stream.close()
