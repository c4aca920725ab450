"""Issue 19 item 3 with `cumulo up --hosts 3` and real VMs (TCG): the zone's storage host
(`[host] storage_hosts`) stores a new volume, which attaches over NBD (qemu-storage-daemon,
TLS-PSK) to an instance of another host. Bytes the guest wrote and synced there are read
back by the storage host's instance after a detach (md5), and over NBD again; the export
cannot be opened from a third host's namespace without TLS nor with a wrong key; its daemon
runs as a uid of its own; an agent restart adopts the export's daemon (the guest keeps its
disk); the storage host goes down (agent and daemon killed) and comes back: the volume
shows `error`, the guest sees I/O errors, then its bytes and its write made meanwhile;
the volume grows online while attached over NBD (the guest sees the new size, old
bytes intact); the instance migrates live to the third host with the volume attached while
it writes to the volume and its boot disk (the same guest, the same bytes, every write it
flushed before, during and after the switch-over on both disks, writes go on); a move back
cancelled during the copy and another whose destination QEMU is killed (kill -9) during the
copy each leave it running on its host, reading and writing its volume, and nothing on the
other host (no QEMU, disk or key); a detach and `cumulo down` leave no daemon."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.agent.net import names
from cumulo.agent.storage.nbd_exports import is_daemon
from tests.conftest import running
from tests.integration.conftest import CUMULO, Cloud, _make, agent_pids
from tests.integration.test_live_migration_qemu import copying
from tests.integration.test_network_cloud import ssh, wait_ssh
from tests.integration.test_volumes_cloud import device_of, rssh

pytestmark = pytest.mark.qemu

STORE = "local-3"  # the storage host of zone local-1a (where `local` also runs)
ZEROS_MD5 = "b6d81b360a5672d80c27430f39153e2c"  # 1 MiB of zeros


@pytest.fixture(scope="module")
def cloud3() -> Iterator[Cloud]:
    for cloud in _make("qemu", ["--hosts", "3"]):
        # One zone: its three hosts are the storage host and two an instance moves between.
        (cloud.state_dir / "cumulo.toml").write_text(cloud.config.replace(
            "[host]\n", f'[host]\nstorage_hosts = ["{STORE}"]\n')
            + '[[regions]]\nname = "local-1"\nzones = ["local-1a"]\n')
        cloud.start(timeout=900)
        yield cloud


def _uncached_md5(c: Cloud, vm: str, dev: str) -> str:
    """md5 of the first MiB as the disk has it (the guest's page cache dropped first)."""
    return rssh(c, vm, "sh", "-c", f"'sync; echo 3 > /proc/sys/vm/drop_caches; "
                                   f"head -c 1048576 /dev/{dev} | md5sum'").split()[0]


def _nbd_info(c: Cloud, from_host: str, export: dict[str, str], psk_dir: Path | None
              ) -> subprocess.CompletedProcess[str]:
    """`qemu-img info` of the export from a host's namespace (with TLS-PSK from psk_dir)."""
    opts = (f"driver=nbd,server.type=inet,server.host={export['host']},"
            f"server.port={export['port']},export={export['name']}")
    argv = ["qemu-img", "info", "--image-opts", opts]
    if psk_dir is not None:
        argv = ["qemu-img", "info", "--object",
                f"tls-creds-psk,id=t,endpoint=client,dir={psk_dir},username={export['vol']}",
                "--image-opts", opts + ",tls-creds=t"]
    ns = names.netns_name(c.state_dir / "hosts" / from_host)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60)


def _agent_of(c: Cloud, host: str) -> int:
    config = str(c.state_dir / "hosts" / host).encode()
    (pid,) = [p for p in agent_pids(c.state_dir)
              if config in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def _wait(what: str, ok: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _storage_host_down_and_back(c: Cloud, writer: str, dev: str, daemon: int, written: str
                                ) -> int:
    """The storage host goes down: its agent frozen (no heartbeat) and the export's daemon
    killed (kill -9). The API shows the volume `error` with the reason and refuses a
    snapshot; the writer's QEMU runs on: a read fails in the guest (EIO, once the NBD client's
    reconnect-delay passed), a write pauses the VM (write-error policy `stop`). The agent
    killed too, `cumulo up` restarts it; it restarts the daemon with the same export name and
    key, the NBD client reconnects by itself, the VM is resumed, the write completes, and
    every synced byte is there. Returns the new daemon's pid."""
    export_dir = c.state_dir / "hosts" / STORE / "nbd" / c.json("volume", "show", "data")["id"]
    spec = json.loads((export_dir / "export.json").read_text())
    late = rssh(c, writer, "sh", "-c", "'head -c 65536 /dev/urandom > /tmp/late && "
                "md5sum < /tmp/late'").split()[0]
    agent = _agent_of(c, STORE)
    os.kill(agent, signal.SIGSTOP)
    write: subprocess.Popen[str] | None = None
    started = time.monotonic()
    try:
        os.kill(daemon, signal.SIGKILL)
        _wait("the volume was not shown in error",
              lambda: c.json("volume", "show", "data")["state"] == "error")
        marked = time.monotonic() - started
        shown = c.json("volume", "show", "data")
        assert shown["attached_to"] == writer, shown
        assert f"its storage host {STORE} is down" in shown["state_reason"], shown
        refused = c.cli("volume", "snapshot", "data", "while-down", check=False)
        assert refused.returncode != 0 and "storage_host_down" in refused.stderr, refused.stderr
        read = ssh(c, writer, "sh", "-c", f"'echo 3 > /proc/sys/vm/drop_caches; "
                   f"head -c 65536 /dev/{dev} > /dev/null'", root=True, check=False)
        assert (read.returncode, read.stderr) == (1, f"head: /dev/{dev}: Input/output error\n")
        assert c.json("instance", "show", writer)["state"] == "running"
        # ssh stalls while the VM is paused: run in the background
        write = subprocess.Popen(
            [*CUMULO, "ssh", "--user", "root", writer, "--", "sh", "-c",
             f"'dd if=/tmp/late of=/dev/{dev} bs=65536 seek=32 conv=fsync 2>/dev/null'"],
            env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        paused = c.wait_state(writer, "paused", timeout=60)
        assert "storage host unreachable" in paused["state_reason"], paused
    finally:
        os.kill(agent, signal.SIGKILL)  # `cumulo up` starts another
        restarted = time.monotonic()
    assert write is not None
    try:
        _wait("the agent was not restarted",
              lambda: len(agent_pids(c.state_dir) - {agent}) == 3)
        _, err = write.communicate(timeout=180)  # resumed: the write completed
        assert write.returncode == 0, err
    finally:
        if write.poll() is None:
            write.kill()
    print(f"storage host down: volume shown in error after {marked:.1f} s; the paused write "
          f"completed {time.monotonic() - restarted:.1f} s after its agent was killed, "
          f"{time.monotonic() - started:.1f} s in all")
    c.wait_state(writer, "running", timeout=30)
    assert c.json("volume", "show", "data")["state"] == "in-use"
    new_daemon = int((export_dir / "pid").read_text())
    assert new_daemon != daemon and is_daemon(new_daemon)
    assert json.loads((export_dir / "export.json").read_text()) == spec  # same name and key
    assert _uncached_md5(c, writer, dev) == written
    back = rssh(c, writer, "sh", "-c", f"'dd if=/dev/{dev} bs=65536 skip=32 count=1 "
                "2>/dev/null | md5sum'").split()[0]
    assert back == late
    return new_daemon


def _write_read_back(c: Cloud, vm: str, dev: str) -> None:
    """A new MiB written to the volume's second MiB and synced is read back from the disk."""
    more = rssh(c, vm, "sh", "-c", "'head -c 1048576 /dev/urandom > /tmp/more && "
                f"dd if=/tmp/more of=/dev/{dev} bs=1048576 seek=1 2>/dev/null && sync && "
                "md5sum < /tmp/more'").split()[0]
    back = rssh(c, vm, "sh", "-c", "'echo 3 > /proc/sys/vm/drop_caches; "
                f"dd if=/dev/{dev} bs=1048576 skip=1 count=1 2>/dev/null | md5sum'").split()[0]
    assert back == more != ZEROS_MD5


# Blocks of the volume the writer loop stamps (one 4 KiB block per tick from 64 MiB on: no
# other step of this test writes there).
TICK_BLOCK0 = 16384


def _start_ticks(c: Cloud, vm: str, dev: str) -> None:
    """A loop in the guest: tick n writes n into the volume's block TICK_BLOCK0 + n and
    flushes it (conv=fsync), then appends n to a file on the boot disk and syncs, every
    0.1 s. So a tick the boot disk has was flushed to both disks first."""
    rssh(c, vm, "sh", "-c", "'rm -f $HOME/ticks; (n=0; while :; do n=$((n+1)); "
         f"printf %08d $n | dd of=/dev/{dev} bs=4096 seek=$(({TICK_BLOCK0}+n)) "
         "conv=notrunc,fsync 2>/dev/null || exit; echo $n >> $HOME/ticks; sync; "
         "usleep 100000; done) >/dev/null 2>&1 & echo $! > $HOME/ticks.pid'")


def _ticks(c: Cloud, vm: str) -> list[int]:
    return [int(n) for n in rssh(c, vm, "cat", "$HOME/ticks").split()]


def _check_ticks(c: Cloud, vm: str, dev: str) -> int:
    """Stop the loop; every tick the boot disk kept is 1..n in order, and each one's block
    on the volume holds its number (read past the guest's cache). n."""
    rssh(c, vm, "sh", "-c", "'kill $(cat $HOME/ticks.pid)'")
    ticks = _ticks(c, vm)
    assert ticks == list(range(1, len(ticks) + 1)), ticks
    out = rssh(c, vm, "sh", "-c", "'echo 3 > /proc/sys/vm/drop_caches; for n in "
               f"$(cat $HOME/ticks); do dd if=/dev/{dev} bs=4096 skip=$(({TICK_BLOCK0}+n)) "
               "count=1 2>/dev/null | head -c 8; echo; done'")
    assert [int(v) for v in out.split()] == ticks[:len(out.split())] == ticks
    return len(ticks)


def _left_on(c: Cloud, host: str, vm_id: str) -> list[str]:
    """What `host` holds of the VM: a QEMU, its runtime files (the volume's key among them),
    its disk."""
    hdir = c.state_dir / "hosts" / host
    pidfile = hdir / "run" / vm_id / "qemu.pid"
    found = ["qemu"] if pidfile.exists() and running(int(pidfile.read_text() or 0)) else []
    found += [f"run/{p.name}" for p in sorted((hdir / "run" / vm_id).glob("*"))]
    return found + (["disk"] if (hdir / "instances" / vm_id).exists() else [])


def _client_host(c: Cloud, volume_id: str) -> str | None:
    """The host the volume's attachment is served to (the API's record)."""
    db = sqlite3.connect(f"file:{c.state_dir / 'cumulo.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT h.name FROM volumes v LEFT JOIN hosts h ON h.id = "
                         "v.client_host_id WHERE v.id = ?", (volume_id,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def _moves_back_that_fail(c: Cloud, vm: str, dev: str, written: str) -> None:
    """`vm` (on local-2, the volume attached over NBD) is moved back to `local` twice: one
    move cancelled during the disk copy (its source's agent held meanwhile, so the cancel
    surely comes before the switch-over), one whose destination QEMU is killed during it.
    Each time the guest runs on where it was with its volume, and `local` holds nothing."""
    inst = c.json("instance", "show", vm)
    vol = c.json("volume", "show", "data")
    boot_id = rssh(c, vm, "cat", "/proc/sys/kernel/random/boot_id").strip()
    assert _client_host(c, vol["id"]) == "local-2"

    agent = _agent_of(c, "local-2")
    mig = c.json("instance", "migrate", vm, "--to", "local")
    copying(c, "local", inst["id"])
    os.kill(agent, signal.SIGSTOP)
    try:
        assert c.json("migration", "show", mig["id"])["state"] in (
            "copying-disks", "copying-memory"), "not during the copy"
        cancelled = c.json("migration", "cancel", mig["id"])
    finally:
        os.kill(agent, signal.SIGCONT)
    assert (cancelled["state"], cancelled["reason"]) == (
        "cancelled", "cancelled by an administrator"), cancelled
    _wait("the destination kept a part of the VM after the cancel",
          lambda: _left_on(c, "local", inst["id"]) == [], timeout=120)

    # Its clean-up reported (the files go a moment before): the next move is taken.
    deadline = time.monotonic() + 60
    while (again := c.cli("-o", "json", "instance", "migrate", vm, "--to", "local",
                          check=False)).returncode != 0:
        assert "migration_in_progress" in again.stderr + again.stdout, again.stderr
        assert time.monotonic() < deadline, "the cancelled migration kept the instance"
        time.sleep(0.5)
    mig = json.loads(again.stdout)
    copying(c, "local", inst["id"])
    os.kill(int((c.state_dir / "hosts" / "local" / "run" / inst["id"] / "qemu.pid")
                .read_text()), signal.SIGKILL)
    _wait("the migration did not fail", lambda: c.json("migration", "show", mig["id"])[
        "state"] not in ("preparing", "copying-disks", "copying-memory"), timeout=120)
    failed = c.json("migration", "show", mig["id"])
    assert failed["state"] == "failed" and failed["reason"], failed
    print(f"destination QEMU killed during the copy: {failed['reason']}")

    for ended in (cancelled, failed):
        events = c.json("instance", "events", vm)
        assert any(e["kind"] in ("migration_cancelled", "migration_failed")
                   and ended["id"] in e["detail"] for e in events), events
    _wait("the destination kept a part of the VM", lambda: _left_on(c, "local", inst["id"])
          == [], timeout=120)
    after = c.json("instance", "show", vm)
    assert (after["host"], after["state"]) == ("local-2", "running"), after
    assert "qemu" in _left_on(c, "local-2", inst["id"])
    assert rssh(c, vm, "cat", "/proc/sys/kernel/random/boot_id").strip() == boot_id
    assert _uncached_md5(c, vm, dev) == written
    _write_read_back(c, vm, dev)
    assert _client_host(c, vol["id"]) == "local-2"
    assert c.json("volume", "show", "data")["state"] == "in-use"


def test_a_volume_written_on_one_host_is_read_on_another(cloud3: Cloud, tmp_path: Path
                                                         ) -> None:
    c = cloud3
    c.json("keypair", "create", "k")
    c.json("host", "disable", "local-2")  # the instances on `local` and the storage host
    vms = {name: c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano",
                        "--zone", "local-1a", "--key", "k", "--wait") for name in ("a", "b")}
    assert {vm["host"] for vm in vms.values()} == {"local", STORE}
    writer = next(n for n, vm in vms.items() if vm["host"] != STORE)
    reader = next(n for n, vm in vms.items() if vm["host"] == STORE)
    vol = c.json("volume", "create", "data", "--size", "1", "--zone", "local-1a", "--wait")
    # on the storage host, though `local` stores no more
    assert (c.state_dir / "hosts" / STORE / "volumes" / f"{vol['id']}.qcow2").is_file()
    for name in vms:
        wait_ssh(c, name, timeout=300)

    # attached over NBD to the writer, on another host than the file
    v = c.json("volume", "attach", "data", writer, "--wait")
    assert (v["state"], v["attached_to"]) == ("in-use", writer)
    export_dir = c.state_dir / "hosts" / STORE / "nbd" / vol["id"]
    daemon = int((export_dir / "pid").read_text())
    uid = os.stat(f"/proc/{daemon}").st_uid  # confined: a uid of its own, its file's owner
    assert uid != 0 and (c.state_dir / "hosts" / STORE / "volumes" / f"{vol['id']}.qcow2"
                         ).stat().st_uid == uid
    dev = device_of(c, writer, vol["id"])
    # Synced: fsync flushes the disk's write cache (over NBD: the storage host's qcow2 data
    # and metadata reach its file). A plain `sync` writes a raw device's pages but sends no
    # flush: what it wrote could still be lost with a killed export daemon.
    rssh(c, writer, "sh", "-c", f"'dd if=/dev/urandom of=/dev/{dev} bs=1048576 count=1 "
                                "iflag=fullblock conv=fsync 2>/dev/null'")
    written = _uncached_md5(c, writer, dev)
    assert written != ZEROS_MD5

    # the export: not without TLS, not with a wrong key, from the third host's namespace
    spec = json.loads((export_dir / "export.json").read_text())
    export = {"host": spec["listen"], "port": str(spec["port"]), "name": spec["name"],
              "vol": vol["id"]}
    plain = _nbd_info(c, "local-2", export, None)
    assert plain.returncode != 0 and "TLS" in plain.stderr, plain.stderr
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "keys.psk").write_text(f"{vol['id']}:{'0' * 64}\n")
    bad = _nbd_info(c, "local-2", export, wrong)
    assert bad.returncode != 0 and "handshake" in bad.stderr.lower(), bad.stderr
    good = _nbd_info(c, "local-2", export, export_dir)  # the real key: the export is there
    assert good.returncode == 0 and "1 GiB" in good.stdout, good.stderr

    # the storage host's agent killed: the new one adopts the daemon; the guest reads on
    old_agent = _agent_of(c, STORE)
    os.kill(old_agent, signal.SIGKILL)
    _wait("the agent was not restarted",
          lambda: {p for p in agent_pids(c.state_dir) if p != old_agent} and
          len(agent_pids(c.state_dir) - {old_agent}) == 3)
    time.sleep(3)  # a pass or two of the new agent
    assert int((export_dir / "pid").read_text()) == daemon and is_daemon(daemon)
    assert os.stat(f"/proc/{daemon}").st_uid == uid
    assert _uncached_md5(c, writer, dev) == written
    assert c.json("volume", "show", "data")["state"] == "in-use"

    daemon = _storage_host_down_and_back(c, writer, dev, daemon, written)

    # detached: the daemon goes; attached to the storage host's instance: the same bytes
    assert c.json("volume", "detach", "data", "--wait")["state"] == "available"
    _wait("the export outlived the detach", lambda: not export_dir.exists())
    assert not is_daemon(daemon)
    c.json("volume", "attach", "data", reader, "--wait")
    assert _uncached_md5(c, reader, device_of(c, reader, vol["id"])) == written

    # and back over NBD (a new export, new secrets): the same bytes; then `cumulo down`
    # stops its daemon with the rest
    c.json("volume", "detach", "data", "--wait")
    c.json("volume", "attach", "data", writer, "--wait")
    assert json.loads((export_dir / "export.json").read_text())["name"] != spec["name"]
    dev = device_of(c, writer, vol["id"])
    assert _uncached_md5(c, writer, dev) == written

    # grown online over NBD: the guest sees 2 GiB without a detach, the synced bytes are
    # intact, a write beyond the old end is read back; the same daemon serves on
    daemon = int((export_dir / "pid").read_text())
    c.json("volume", "resize", "data", "--size", "2")
    _wait("the guest did not see the new size", lambda: int(rssh(
        c, writer, "cat", f"/sys/block/{dev}/size")) == 2 * 2**30 // 512, timeout=120)
    assert c.json("volume", "show", "data")["size_gib"] == 2
    assert int((export_dir / "pid").read_text()) == daemon and is_daemon(daemon)
    assert _uncached_md5(c, writer, dev) == written
    beyond = rssh(c, writer, "sh", "-c", "'head -c 1048576 /dev/urandom > /tmp/beyond && "
                  f"dd if=/tmp/beyond of=/dev/{dev} bs=1048576 seek=1536 2>/dev/null && "
                  "sync && md5sum < /tmp/beyond'").split()[0]
    assert rssh(c, writer, "sh", "-c", "'echo 3 > /proc/sys/vm/drop_caches; "
                f"dd if=/dev/{dev} bs=1048576 skip=1536 count=1 2>/dev/null | md5sum'"
                ).split()[0] == beyond != ZEROS_MD5

    # live: the writer moves to the third host (the scheduler skips the storage host) with
    # the volume attached, writing to it and to its boot disk throughout; the same guest (its
    # boot id) reads the same bytes, over the same export, every tick flushed before, during
    # and after the switch-over is on both disks, and its writes after the move are read back
    boot_id = rssh(c, writer, "cat", "/proc/sys/kernel/random/boot_id").strip()
    c.json("host", "enable", "local-2")
    _start_ticks(c, writer, dev)
    _wait("the writer loop did not tick", lambda: len(_ticks(c, writer)) >= 5)
    mig = c.json("instance", "migrate", writer, "--wait")
    assert (mig["state"], mig["destination"]) == ("completed", "local-2"), mig
    assert c.json("instance", "show", writer)["host"] == "local-2"
    at_switch = len(_ticks(c, writer))
    _wait("the writer loop stopped at the move",
          lambda: len(_ticks(c, writer)) >= at_switch + 5)
    assert _check_ticks(c, writer, dev) >= at_switch + 5
    assert rssh(c, writer, "cat", "/proc/sys/kernel/random/boot_id").strip() == boot_id
    assert _uncached_md5(c, writer, dev) == written
    _write_read_back(c, writer, dev)
    _moves_back_that_fail(c, writer, dev, written)
    assert c.json("volume", "show", "data")["state"] == "in-use"
    daemon = int((export_dir / "pid").read_text())
    c.stop()
    subprocess.run([*CUMULO, "down", "--state-dir", str(c.state_dir)], check=True,
                   capture_output=True, timeout=300)
    assert not is_daemon(daemon) and not export_dir.exists()
