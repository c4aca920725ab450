"""`cumulo up --hosts 2` with real VMs (TCG): a dedicated host takes only its project's
instances, another project is refused naming dedication, and each dedicated instance's QEMU
runs its vCPU threads on host CPUs of its own (read back from /proc)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cloud, _make, qemu_pids

pytestmark = pytest.mark.qemu


@pytest.fixture
def qemu_cloud_2() -> Iterator[Cloud]:
    """Two simulated hosts running real VMs: one in each zone."""
    for cloud in _make("qemu", ["--hosts", "2"]):
        cloud.start()
        yield cloud


def vcpu_affinity(pid: int) -> dict[str, str]:
    """QEMU's vCPU threads (named "CPU n/TCG" or "/KVM") -> the CPUs each may run on."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = dict(line.split(":\t", 1) for line in
                      (task / "status").read_text().splitlines() if ":\t" in line)
        if status["Name"].startswith("CPU "):
            out[status["Name"].strip()] = status["Cpus_allowed_list"].strip()
    return out


def wait_running(c: Cloud, project: str, names: list[str],
                 timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    shown: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        shown = {n: c.json("--project", project, "instance", "show", n) for n in names}
        if all(v["state"] == "running" for v in shown.values()):
            return shown
        assert not any(v["state"] == "error" for v in shown.values()), shown
        time.sleep(1)
    raise AssertionError(f"not running after {timeout} s: {shown}")


def test_dedicated_host_takes_only_its_projects_instances_on_cpus_of_their_own(
        qemu_cloud_2: Cloud) -> None:
    c = qemu_cloud_2
    zone = next(h["zone"] for h in c.json("host", "list") if h["name"] == "local")
    c.cli("project", "create", "team")
    dh = c.json("--project", "team", "dedicated-host", "allocate", "--zone", zone)
    assert (dh["host"], dh["state"], dh["project"]) == ("local", "available", "team")
    machine = sorted(os.sched_getaffinity(0))
    if len(machine) < 2:
        pytest.skip("two instances pinned apart need a machine of two CPUs")
    # Pinned vCPUs are the machine's CPUs (the simulated hosts share them): one per vCPU.
    assert dh["capacity"]["vcpus_total"] == len(machine)
    for name, how in (("d1", ["--dedicated-host", dh["id"]]), ("d2", ["--tenancy", "dedicated"])):
        c.json("--project", "team", "instance", "create", name, "--image", "tiny", "--type",
               "t1.nano", "--zone", zone, *how)
    shown = wait_running(c, "team", ["d1", "d2"], timeout=400)
    assert {(v["host"], v["tenancy"], v["dedicated_host"]) for v in shown.values()} == {
        ("local", "dedicated", dh["id"])}
    # Another project: refused by id, and by the scheduler, naming dedication.
    r = c.cli("instance", "create", "x1", "--image", "tiny", "--type", "t1.nano",
              "--dedicated-host", dh["id"], check=False)
    assert r.returncode != 0 and r.stderr == (
        f"error[dedicated_to_another_project]: dedicated host {dh['id']} is dedicated to "
        "another project\n")
    r = c.cli("instance", "create", "x2", "--image", "tiny", "--type", "t1.nano",
              "--zone", zone, check=False)
    assert r.returncode != 0 and r.stderr == (
        f"error[no_host_fits]: no host fits: zone {zone} has 1 host: 1 dedicated to another "
        "project\n")
    # Each instance's vCPU thread runs on its own CPU, no two on one.
    pids = qemu_pids(c.state_dir)
    pinned = {name: vcpu_affinity(pids[shown[name]["id"]]) for name in ("d1", "d2")}
    assert pinned == {"d1": {"CPU 0/TCG": str(machine[0])},
                      "d2": {"CPU 0/TCG": str(machine[1])}}, pinned
    # Release waits for the instances to go.
    r = c.cli("--project", "team", "dedicated-host", "release", dh["id"], check=False)
    assert r.returncode != 0 and r.stderr.startswith("error[dedicated_host_in_use]: ")
    listed = c.json("--project", "team", "dedicated-host", "list")
    assert [(d["id"], d["instances"]) for d in listed] == [(dh["id"], ["d1", "d2"])]
