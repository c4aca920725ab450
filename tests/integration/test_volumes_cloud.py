"""Issue 4 through the whole stack: bytes written in a guest to a hot-plugged volume survive
detach + attach elsewhere, stop/start, an agent restart, and snapshot -> new volume; an online
grow is seen by the guest; hostile images are refused by `cumulo image import`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Cloud
from tests.integration.test_network_cloud import ssh, wait_ssh

pytestmark = pytest.mark.qemu


def rssh(c: Cloud, vm: str, *command: str) -> str:
    """Root SSH that retries transport failures (exit 255): a TCG guest busy with I/O can be
    slow to accept; remote command failures are not retried."""
    for _ in range(5):
        r = ssh(c, vm, *command, root=True, check=False)
        if r.returncode != 255:
            assert r.returncode == 0, r.stderr
            return r.stdout
        time.sleep(1)
    raise AssertionError(f"ssh to {vm} kept failing: {r.stderr}")


def device_of(c: Cloud, vm: str, volume_id: str, timeout: float = 60) -> str:
    """The guest's /dev name of a volume, found by its disk serial (the id without '-')."""
    serial = volume_id.replace("-", "")
    script = (f"'for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = {serial} ] "
              "&& basename $d; done; true'")  # (the loop's status is its last test's)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = rssh(c, vm, "sh", "-c", script).strip()
        if out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"{volume_id} not visible in {vm}")


def checksum(c: Cloud, vm: str, dev: str) -> str:
    return rssh(c, vm, "sh", "-c", f"'head -c 1048576 /dev/{dev} | md5sum'").split()[0]


def test_volume_data_survives_everything(qemu_cloud: Cloud) -> None:
    c = qemu_cloud
    c.json("keypair", "create", "k")
    for name in ("a", "b"):
        c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano", "--key", "k",
               "--wait")
    vol = c.json("volume", "create", "data", "--size", "1", "--type", "fast", "--wait")
    assert (vol["state"], vol["iops"]) == ("available", 5000)
    for name in ("a", "b"):
        wait_ssh(c, name)

    # hot-plug into running a, write random bytes
    v = c.json("volume", "attach", "data", "a", "--wait")
    assert (v["state"], v["attached_to"]) == ("in-use", "a")
    dev = device_of(c, "a", vol["id"])
    rssh(c, "a", "sh", "-c", f"'head -c 1048576 /dev/urandom > /dev/{dev} && sync'")
    written = checksum(c, "a", dev)
    assert written != "b6d81b360a5672d80c27430f39153e2c"  # md5 of 1 MiB of zeros

    snap = c.json("volume", "snapshot", "data", "snap1", "--wait")
    assert snap["state"] == "available"

    # detach, attach to b: same bytes
    assert c.json("volume", "detach", "data", "--wait")["state"] == "available"
    c.json("volume", "attach", "data", "b", "--wait")
    assert checksum(c, "b", device_of(c, "b", vol["id"])) == written

    # stop/start b (cold attach at boot)
    c.json("instance", "stop", "b", "--wait")
    assert c.json("volume", "show", "data")["attached_to"] == "b"
    c.json("instance", "start", "b", "--wait")
    wait_ssh(c, "b")
    assert checksum(c, "b", device_of(c, "b", vol["id"])) == written

    # agent restart (killed behind cumulo's back; `cumulo up` restarts it)
    agent_pid = int(subprocess.run(["pgrep", "-f", f"cumulo.agent --config {c.state_dir}"],
                                   capture_output=True, text=True).stdout.split()[0])
    os.kill(agent_pid, signal.SIGKILL)
    time.sleep(3)
    assert c.json("volume", "show", "data")["state"] == "in-use"
    assert checksum(c, "b", device_of(c, "b", vol["id"])) == written

    # online grow: the guest sees the new size without a reboot
    c.json("volume", "resize", "data", "--size", "2", "--wait")
    dev_b = device_of(c, "b", vol["id"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sectors = int(rssh(c, "b", "cat", f"/sys/block/{dev_b}/size"))
        if sectors == 2 * 2**30 // 512:
            break
        time.sleep(0.5)
    assert sectors == 2 * 2**30 // 512

    # snapshot -> new volume, attached to a: the bytes of the snapshot moment
    copy = c.json("volume", "create", "copy", "--size", "1", "--from-snapshot", "snap1",
                  "--wait")
    c.json("volume", "attach", "copy", "a", "--wait")
    assert checksum(c, "a", device_of(c, "a", copy["id"])) == written

    # delete is refused while attached; instance delete keeps the volume (not
    # delete-on-termination) and frees it
    r = c.cli("volume", "delete", "data", check=False)
    assert r.returncode != 0 and "volume_in_use" in r.stderr
    c.cli("instance", "delete", "b", "--wait")
    deadline = time.monotonic() + 30
    while c.json("volume", "show", "data")["state"] != "available":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    c.cli("volume", "delete", "data", "--wait")
    assert "data" not in {x["name"] for x in c.json("volume", "list")}


def test_hostile_images_are_refused(qemu_cloud: Cloud, tmp_path: Path) -> None:
    c = qemu_cloud
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow",
                    str(evil), "1M"], check=True)
    before = c.json("image", "list")
    r = c.cli("image", "import", "evil", str(evil), "--arch", "x86_64", check=False)
    assert r.returncode != 0 and "image_backing_file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    r = c.cli("image", "import", "junk", str(junk), "--arch", "x86_64", check=False)
    assert r.returncode != 0
    assert c.json("image", "list") == before
    good = tmp_path / "good.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(good), "64M"], check=True)
    img = c.json("image", "import", "blank", str(good), "--arch", "x86_64",
                 "--default-user", "debian")
    assert img["default_user"] == "debian"
    assert "blank" in {i["name"] for i in c.json("image", "list")}
    c.cli("image", "delete", "blank")
