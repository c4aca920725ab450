"""Issue 19 item 3 with `cumulo up --hosts 3` and real VMs (TCG): the zone's storage host
(`[host] storage_hosts`) stores a new volume, which attaches over NBD (qemu-storage-daemon,
TLS-PSK) to an instance of another host. Bytes the guest wrote and synced there are read
back by the storage host's instance after a detach (md5), and over NBD again; the export
cannot be opened from a third host's namespace without TLS nor with a wrong key; an agent
restart adopts the export's daemon (the guest keeps its disk); a detach and `cumulo down`
leave no daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.agent.net import names
from cumulo.agent.storage.nbd_exports import is_daemon
from tests.integration.conftest import CUMULO, Cloud, _make, agent_pids
from tests.integration.test_network_cloud import wait_ssh
from tests.integration.test_volumes_cloud import device_of, rssh

pytestmark = pytest.mark.qemu

STORE = "local-3"  # the storage host of zone local-1a (where `local` also runs)
ZEROS_MD5 = "b6d81b360a5672d80c27430f39153e2c"  # 1 MiB of zeros


@pytest.fixture(scope="module")
def cloud3() -> Iterator[Cloud]:
    for cloud in _make("qemu", ["--hosts", "3"]):
        (cloud.state_dir / "cumulo.toml").write_text(cloud.config.replace(
            "[host]\n", f'[host]\nstorage_hosts = ["{STORE}"]\n'))
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


def test_a_volume_written_on_one_host_is_read_on_another(cloud3: Cloud, tmp_path: Path
                                                         ) -> None:
    c = cloud3
    c.json("keypair", "create", "k")
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
    dev = device_of(c, writer, vol["id"])
    rssh(c, writer, "sh", "-c", f"'head -c 1048576 /dev/urandom > /dev/{dev} && sync'")
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
    assert _uncached_md5(c, writer, dev) == written
    assert c.json("volume", "show", "data")["state"] == "in-use"

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
    assert _uncached_md5(c, writer, device_of(c, writer, vol["id"])) == written
    daemon = int((export_dir / "pid").read_text())
    c.stop()
    subprocess.run([*CUMULO, "down", "--state-dir", str(c.state_dir)], check=True,
                   capture_output=True, timeout=300)
    assert not is_daemon(daemon) and not export_dir.exists()
