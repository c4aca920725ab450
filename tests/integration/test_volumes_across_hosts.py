"""Issue 19 item 3 with `cumulo up --hosts 3` and real VMs (TCG): a volume stored on one host
attaches over NBD (qemu-storage-daemon, TLS-PSK) to an instance of another host; bytes the
guest wrote and synced there are read back after a detach by an instance of the storage host
(md5); the export cannot be opened from another host's namespace without its key, nor with a
wrong one; the export's daemon goes with the detach."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.agent.net import names
from tests.integration.conftest import Cloud, _make
from tests.integration.test_network_cloud import wait_ssh
from tests.integration.test_volumes_cloud import checksum, device_of, rssh

pytestmark = pytest.mark.qemu

ZEROS_MD5 = "b6d81b360a5672d80c27430f39153e2c"  # 1 MiB of zeros


@pytest.fixture(scope="module")
def cloud3() -> Iterator[Cloud]:
    for cloud in _make("qemu", ["--hosts", "3"]):
        cloud.start(timeout=900)
        yield cloud


def _storage_host(c: Cloud, vol_id: str) -> str:
    (host,) = [d.name for d in (c.state_dir / "hosts").iterdir()
               if (d / "volumes" / f"{vol_id}.qcow2").is_file()]
    return host


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


def test_a_volume_written_on_one_host_is_read_on_another(cloud3: Cloud, tmp_path: Path
                                                         ) -> None:
    c = cloud3
    c.json("keypair", "create", "k")
    vms = {name: c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano",
                        "--zone", "local-1a", "--key", "k", "--wait") for name in ("a", "b")}
    assert {vm["host"] for vm in vms.values()} == {"local", "local-3"}
    vol = c.json("volume", "create", "data", "--size", "1", "--zone", "local-1a", "--wait")
    store = _storage_host(c, vol["id"])
    writer = next(n for n, vm in vms.items() if vm["host"] != store)
    reader = next(n for n, vm in vms.items() if vm["host"] == store)
    for name in vms:
        wait_ssh(c, name, timeout=300)

    # attached over NBD to the writer, on another host than the file
    v = c.json("volume", "attach", "data", writer, "--wait")
    assert (v["state"], v["attached_to"]) == ("in-use", writer)
    export_dir = c.state_dir / "hosts" / store / "nbd" / vol["id"]
    assert (export_dir / "pid").is_file()
    dev = device_of(c, writer, vol["id"])
    rssh(c, writer, "sh", "-c", f"'head -c 1048576 /dev/urandom > /dev/{dev} && sync'")
    written = checksum(c, writer, dev)
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

    # detached: the daemon goes; attached to the storage host's instance: the same bytes
    assert c.json("volume", "detach", "data", "--wait")["state"] == "available"
    deadline = time.monotonic() + 30
    while export_dir.exists():
        assert time.monotonic() < deadline, "the export outlived the detach"
        time.sleep(0.5)
    c.json("volume", "attach", "data", reader, "--wait")
    assert checksum(c, reader, device_of(c, reader, vol["id"])) == written
