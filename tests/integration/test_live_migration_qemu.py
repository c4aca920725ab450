"""Live migration with real VMs (TCG) on `cumulo up --hosts 2` (one zone, two hosts): a
running instance streaming a counter over TCP through its public IP (the edge: a client on
the machine, this test, reads it from 127.100.0.N) moves to the other host; the stream goes
on without a gap and without a new connection, a file written and synced
before has the same checksum after, the guest is not rebooted (same boot id, uptime goes
on), and `migration show` says completed with QEMU's downtime. Then a migration cancelled
once the destination is ready leaves the instance running where it was and nothing on the
destination (no QEMU, no disk). The same live move, with an arm64 guest (QEMU's aarch64
`virt` machine: another device model, another migration stream)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cumulo.agent.net import names
from tests.conftest import running
from tests.integration.conftest import CUMULO, Cloud, _make
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu

ONE_ZONE = '[[regions]]\nname = "local-1"\nzones = ["local-1a"]\n'
PORT = 5001


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for c in _make("qemu", ["--hosts", "2"]):
        (c.state_dir / "cumulo.toml").write_text(c.config + ONE_ZONE)
        c.start()
        c.json("keypair", "create", "k")
        c.cli("security-group", "rule-add", "default", "--proto", "tcp", "--port", str(PORT))
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


class SshReader(Reader):
    """The same, over an SSH session to the public address (`cumulo ssh`) in which the guest
    prints its counter: what a user's session through the edge sees of a move."""

    def __init__(self, c: Cloud, name: str) -> None:  # no super(): it opens no socket
        self.proc = subprocess.Popen(
            [*CUMULO, "ssh", name, "--", "sh", "-c", "'i=0; while :; do echo $i; "
             "i=$((i+1)); usleep 100000; done'"], env=c.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.data = bytearray()
        self.longest_gap = 0.0
        self.ended = None
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - self._last)
            self._last = now
            self.data += chunk
        self.ended = f"the SSH session ended ({self.proc.wait()})"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _guest(c: Cloud, name: str) -> dict[str, str]:
    out = ssh(c, name, "sh", "-c", "'cat /proc/sys/kernel/random/boot_id; cut -d\" \" -f1 "
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


def _agent_pid(c: Cloud, host: str, missing: int = 0) -> int:
    """The pid of the agent of `host` (its command line names its config file); `missing`
    when there is none (e.g. between a killed agent and the next)."""
    config = str(c.state_dir / "hosts" / host / "agent.json").encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"cumulo.agent" in cmd and config in cmd and running(int(proc.name)):
                return int(proc.name)
    if missing:
        return missing
    raise AssertionError(f"no agent for host {host}")


def copying(c: Cloud, host: str, vm_id: str) -> None:
    """Wait until the source mirrors the disk into `host`: its prepared QEMU's NBD server
    (its port in the destination's migration.json) has a client."""
    path = c.state_dir / "hosts" / host / "run" / vm_id / "migration.json"
    ns = names.netns_name(c.state_dir / "hosts" / host)

    def connected() -> bool:
        try:
            port = json.loads(path.read_text())["incoming"]["nbd_port"]
        except (OSError, ValueError, KeyError):
            return False
        return bool(subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
             f"( sport = :{port} )"], capture_output=True, text=True, timeout=30).stdout.strip())

    deadline = time.monotonic() + 120
    while not connected():
        assert time.monotonic() < deadline, "the disk copy never started"
        time.sleep(0.05)


def _wait(what: str, check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _moves_live(c: Cloud, vm: dict[str, Any], over_ssh: bool = False
                ) -> tuple[Reader, dict[str, str]]:
    """Migrate the running instance `vm` to the other host while it streams a counter
    through its public IP (a TCP connection, or with `over_ssh` an SSH session); check that
    nothing its user sees changed. The open stream and the guest as it was before the
    move."""
    name, source = vm["name"], vm["host"]
    (dest,) = {h["name"] for h in c.json("host", "list")} - {source}

    # A counter streamed over one TCP connection from the guest, through its public IP, to
    # this test; and a synced file.
    ssh(c, name, "sh", "-c", "'dd if=/dev/urandom of=$HOME/f bs=1024 count=4096 "
        "2>/dev/null; sync'")
    if over_ssh:
        stream: Reader = SshReader(c, name)
    else:
        ssh(c, name, "sh", "-c", f"'(i=0; while :; do echo $i; i=$((i+1)); usleep 100000; "
            f"done | nc -l -p {PORT} >/dev/null 2>&1 &)'")
        stream = Reader(vm["public_ip"], PORT)
    _wait("no stream", lambda: len(stream.lines()) >= 10, timeout=60)
    before = _guest(c, name)
    gap_before = stream.longest_gap

    mig = c.json("instance", "migrate", name, "--wait")
    assert (mig["state"], mig["source"], mig["destination"]) == ("completed", source, dest), mig
    assert mig["downtime_ms"] is not None and mig["total_s"] is not None, mig
    at_switch = len(stream.lines())
    shown = c.json("migration", "show", mig["id"])
    assert shown["state"] == "completed" and shown["downtime_ms"] == mig["downtime_ms"]

    moved = c.json("instance", "show", name)
    assert moved["host"] == dest and moved["state"] == "running"
    for key in ("id", "arch", "private_ip", "public_ip", "fqdn"):
        assert moved[key] == vm[key], key
    assert _vm_files(c, source, vm["id"]) == []  # the source removed its copy
    _wait("the stream stopped after the switch-over",
          lambda: len(stream.lines()) > at_switch + 20, timeout=60)
    after = _guest(c, name)
    assert (after["boot_id"], after["mac"], after["md5"]) == (
        before["boot_id"], before["mac"], before["md5"])
    assert float(after["uptime"]) > float(before["uptime"])
    numbers = [int(n) for n in stream.lines()]
    assert numbers == list(range(len(numbers))), "a gap or a restart in the counter"
    # One connection all along: still open (the guest's nc serves one connection only).
    assert stream.ended is None, stream.ended
    print(f"{vm['arch']}: stream through the public IP: longest gap "
          f"{stream.longest_gap * 1000:.0f} ms (before the migration {gap_before * 1000:.0f} "
          f"ms), QEMU downtime {mig['downtime_ms']} ms")
    events = c.json("instance", "events", name)
    assert any(e["kind"] == "migrated" and mig["id"] in e["detail"] for e in events)
    return stream, before


def test_a_running_instance_moves_live_a_cancel_leaves_it_and_a_lost_agent_splits_nothing(
        cloud: Cloud) -> None:
    c = cloud
    vm = c.json("instance", "create", "vm", "--image", "tiny", "--type", "t1.nano", "--key",
                "k", "--wait")
    wait_ssh(c, "vm", timeout=300)
    source = vm["host"]
    stream, before = _moves_live(c, vm)
    dest = c.json("instance", "show", "vm")["host"]

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
    assert _guest(c, "vm")["boot_id"] == before["boot_id"]
    shown = c.json("migration", "show", back["id"])
    assert (shown["state"], shown["reason"]) == ("cancelled", "cancelled by an administrator")
    grown = len(stream.lines())
    _wait("the stream stopped after the cancel", lambda: len(stream.lines()) > grown + 10, 60)
    assert stream.ended is None, stream.ended

    # Back again, the destination's agent killed (kill -9) at the switch-over: held
    # (SIGSTOP) from the start of the copy, so that it cannot let the guest run there; the
    # source's QEMU completes and stays paused. Never two hosts running the guest: it waits,
    # paused, for the destination's next agent (`cumulo up` starts one), which resumes it
    # there; then the source removes its copy. One host runs it, the API says which.
    agent = _agent_pid(c, source)
    again = c.json("instance", "migrate", "vm", "--to", source)
    copying(c, source, vm["id"])
    os.kill(agent, signal.SIGSTOP)
    try:
        _wait("no switch-over", lambda: c.json("migration", "show", again["id"])[
            "downtime_ms"] is not None, timeout=120)
        shown = c.json("migration", "show", again["id"])
        assert shown["state"] == "switching-over", shown  # switched: it only goes forward
        assert c.json("instance", "show", "vm")["host"] == dest
        assert "qemu" in _vm_files(c, dest, vm["id"])  # paused: the source keeps its copy
        paused = len(stream.lines())
        time.sleep(2)  # the guest runs nowhere: its counter does not move
        assert len(stream.lines()) == paused, "the guest runs while its destination waits"
    finally:
        os.kill(agent, signal.SIGKILL)
    _wait("no new agent", lambda: _agent_pid(c, source, missing=agent) != agent, timeout=120)
    _wait("the migration did not complete", lambda: c.json("migration", "show", again["id"])[
        "state"] == "completed", timeout=180)
    assert c.json("instance", "show", "vm")["host"] == source
    _wait("the source kept its copy", lambda: _vm_files(c, dest, vm["id"]) == [])
    assert _vm_files(c, source, vm["id"]) == ["qemu", "disk"]
    assert _guest(c, "vm")["boot_id"] == before["boot_id"]
    grown = len(stream.lines())
    _wait("the stream stopped after the agent came back",
          lambda: len(stream.lines()) > grown + 10, 60)
    numbers = [int(n) for n in stream.lines()]
    assert numbers == list(range(len(numbers))), "a gap or a restart in the counter"
    assert stream.ended is None, stream.ended
    stream.close()


def test_an_arm64_instance_moves_live(cloud: Cloud) -> None:
    c = cloud
    vm = c.json("instance", "create", "arm", "--arch", "arm64", "--image", "tiny", "--type",
                "t1.nano", "--key", "k", "--wait")
    assert vm["arch"] == "arm64"
    wait_ssh(c, "arm", timeout=300)
    stream, _ = _moves_live(c, vm, over_ssh=True)  # a user's SSH session goes on
    stream.close()
    c.json("instance", "delete", "arm")
