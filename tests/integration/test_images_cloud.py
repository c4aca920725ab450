"""Images over the network in a real cloud (`cumulo up` and its agent as processes): the
host fetches what it boots into its own cache, `image create-from-instance` is done by the
host agent (export + upload), and a deleted image leaves the host's cache."""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import Cloud
from tests.integration.test_qemu_cloud import wait_console


def cached(c: Cloud, image_id: str) -> list[Path]:
    return sorted((c.state_dir / "hosts" / "local" / "images" / image_id).glob("*"))


def backing_of(disk: Path) -> str:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], check=True,
                          capture_output=True, text=True).stdout
    return str(json.loads(info)["full-backing-filename"])


def test_images_are_fetched_exported_and_collected_over_http(fake_cloud: Cloud) -> None:
    c = fake_cloud
    vm = c.json("instance", "create", "vm", "--image", "tiny", "--type", "t1.nano", "--wait")
    tiny = {v["arch"]: v["id"] for v in c.json("image", "show", "tiny")["variants"]}
    files = cached(c, tiny["x86_64"])
    assert [f.name.split(".")[0] for f in files] == ["disk", "initrd", "kernel"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o444 for f in files)
    disk = c.state_dir / "hosts" / "local" / "instances" / vm["id"] / "disk.qcow2"
    assert backing_of(disk) == str(files[0])  # the overlay is made on the host's own copy

    c.json("instance", "stop", "vm", "--wait")
    snap = c.json("image", "create-from-instance", "snap", "vm")
    (variant,) = snap["variants"]
    assert (snap["project"], variant["arch"], variant["boot"]) == ("default", "x86_64", "kernel")
    vm2 = c.json("instance", "create", "vm2", "--image", "snap", "--type", "t1.nano", "--wait")
    assert vm2["state"] == "running"
    assert len(cached(c, variant["id"])) == 3  # fetched by the host like any image
    r = c.cli("image", "create-from-instance", "snap2", "vm2", check=False)
    assert r.returncode != 0 and "error[instance_not_stopped]" in r.stderr

    c.cli("instance", "delete", "vm2", "--wait")
    c.cli("image", "delete", "snap")
    deadline = time.monotonic() + 120  # the host asks the catalogue every minute
    while cached(c, variant["id"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert cached(c, variant["id"]) == []
    assert len(cached(c, tiny["x86_64"])) == 3  # still used


def test_an_image_made_from_a_vm_boots_with_its_disk(qemu_cloud: Cloud) -> None:
    """Real TCG VMs: what the first VM wrote to its disk, the VM made from its image reads."""
    c = qemu_cloud
    marker = secrets.token_hex(6)
    write = c.state_dir / "write.sh"
    write.write_text(f"#!/bin/sh\necho {marker} > /etc/cumulo-marker; sync\n"
                     "echo marker-written\n")
    read = c.state_dir / "read.sh"
    read.write_text("#!/bin/sh\necho marker-is-$(cat /etc/cumulo-marker)\n")
    c.json("instance", "create", "src", "--image", "tiny", "--type", "t1.nano",
           "--user-data", str(write), "--wait")
    wait_console(c, "src", "marker-written", timeout=180)
    c.json("instance", "stop", "src", "--wait")
    c.json("image", "create-from-instance", "golden", "src")
    c.json("instance", "create", "copy", "--image", "golden", "--type", "t1.nano",
           "--user-data", str(read), "--wait")
    wait_console(c, "copy", f"marker-is-{marker}", timeout=180)
