"""A full host disk under a real VM (issue 17, item 8). The host's volumes dir is a small
filesystem; a guest writes to a volume until it fills: the instance shows `paused` with the
cause and the volume, the write waits (nothing lost); space is freed and the agent resumes
the VM by itself: the write completes with the right bytes. A volume whose type says
`report` fails the write in the guest instead. A paused VM can be rebooted and stopped."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CUMULO, Cloud
from tests.integration.test_host_disk_cloud import cloud_with_small_fs
from tests.integration.test_network_cloud import wait_ssh
from tests.integration.test_volumes_cloud import device_of, rssh

pytestmark = pytest.mark.qemu

MIB = 1024 * 1024
WORD = "cumulo-disk-full"  # the guest writes `yes WORD` (WORD + "\n", over and over)
SIZE = 16 * MIB
CONFIG = """resume_free_mib = 8

[[volume_types]]
name = "standard"
iops = 20000
mbps = 500

[[volume_types]]
name = "scratch"
iops = 20000
mbps = 500
write_error = "report"
"""


def expected_md5(size: int) -> str:
    line = (WORD + "\n").encode()
    return hashlib.md5((line * (size // len(line) + 1))[:size]).hexdigest()


def fill(mount: Path, leave_mib: int) -> Path:
    """A ballast file that leaves `leave_mib` MiB free on the filesystem."""
    ballast = mount / "ballast"
    ballast.unlink(missing_ok=True)
    st = os.statvfs(mount)
    size = st.f_bavail * st.f_frsize - leave_mib * MIB
    fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return ballast


def writer(c: Cloud, vm: str, dev: str, seek_mib: int = 0) -> subprocess.Popen[str]:
    """The guest writes SIZE bytes of the pattern to /dev/DEV (at SEEK_MIB), then syncs."""
    script = (f"'yes {WORD} | head -c {SIZE} | dd of=/dev/{dev} bs=65536"
              f" seek={seek_mib * 16} conv=fsync 2>&1'")
    return subprocess.Popen([*CUMULO, "ssh", "--user", "root", vm, "--", "sh", "-c", script],
                            env=c.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(c: Cloud, vm: str, state: str, timeout: float) -> dict[str, Any]:
    return c.wait_state(vm, state, timeout)


def md5_of(c: Cloud, vm: str, dev: str) -> str:
    return rssh(c, vm, "sh", "-c", f"'head -c {SIZE} /dev/{dev} | md5sum'").split()[0]


def boots(c: Cloud, vm: str) -> int:
    return c.cli("instance", "console-log", vm).stdout.count("cumulo-tiny: ready")


def test_a_full_disk_pauses_the_vm_and_space_freed_resumes_it() -> None:
    with cloud_with_small_fs("qemu", "hosts/local/volumes", "64m", CONFIG) as (c, mount):
        c.json("keypair", "create", "k")
        c.json("instance", "create", "a", "--image", "tiny", "--type", "t1.nano", "--key", "k",
               "--wait")
        data = c.json("volume", "create", "data", "--size", "1", "--wait")
        scratch = c.json("volume", "create", "scratch", "--size", "1", "--type", "scratch",
                         "--wait")
        assert (data["write_error"], scratch["write_error"]) == ("stop", "report")
        wait_ssh(c, "a")
        for name in ("data", "scratch"):
            c.json("volume", "attach", name, "a", "--wait")
        dev = device_of(c, "a", data["id"])

        # The disk fills in the middle of the write: paused, saying why and where.
        ballast = fill(mount, leave_mib=4)
        w = writer(c, "a", dev)
        shown = wait_for(c, "a", "paused", 120)
        assert shown["state_reason"].startswith(f"host disk full (I/O error on {data['id']})")
        assert w.poll() is None  # the guest's write waits, it did not fail
        one_line = c.cli("instance", "start", "a", check=False)
        assert one_line.returncode != 0 and "error[invalid_state]" in one_line.stderr

        # Space comes back: the agent resumes the VM, the write completes, bytes intact.
        ballast.unlink()
        wait_for(c, "a", "running", 60)
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0, out
        assert md5_of(c, "a", dev) == expected_md5(SIZE)

        # `report`: the guest sees the error (EIO) and keeps running.
        ballast = fill(mount, leave_mib=2)
        w = writer(c, "a", device_of(c, "a", scratch["id"]))
        out, _ = w.communicate(timeout=180)
        assert w.returncode != 0 and "Input/output error" in out, out
        assert c.json("instance", "show", "a")["state"] == "running"

        # Paused, then rebooted: the VM is reset and runs (the write in flight is dropped);
        # what was written before is still there.
        before = boots(c, "a")
        w = writer(c, "a", dev, seek_mib=32)
        wait_for(c, "a", "paused", 120)
        assert c.json("instance", "reboot", "a", "--wait")["state"] == "running"
        w.kill()
        w.wait()
        deadline = time.monotonic() + 120
        while boots(c, "a") <= before:
            assert time.monotonic() < deadline, "the paused VM did not boot again"
            time.sleep(1)
        wait_ssh(c, "a")
        dev = device_of(c, "a", data["id"])
        assert md5_of(c, "a", dev) == expected_md5(SIZE)

        # Paused, then stopped: it cannot power off while frozen: forced at once, and said so.
        w = writer(c, "a", dev, seek_mib=64)
        wait_for(c, "a", "paused", 120)
        started = time.monotonic()
        stopped = c.json("instance", "stop", "a", "--wait")
        assert stopped["state"] == "stopped"
        assert "could not power off; it was powered off by force" in stopped["state_reason"]
        assert time.monotonic() - started < 20  # not the 20 s power-off grace time
        w.kill()
        w.wait()
        ballast.unlink()
