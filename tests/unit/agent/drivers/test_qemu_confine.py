"""Per-VM uids (claims shared by every agent on the machine), file hand-over, cgroups."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qemu_cgroup import VmCgroups, cgroup2_mount, limits
from cumulo.agent.drivers.qemu_cgroup_v1 import v1_limits, v1_mounts
from cumulo.agent.drivers.qemu_confine import UidPool, grant, granted, revoke, revoke_all


def vm_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "run" / name
    d.mkdir(parents=True)
    return d


def test_each_vm_gets_its_own_uid_and_keeps_it(tmp_path: Path) -> None:
    pool = UidPool(base=5000, count=3, registry=tmp_path / "uids")
    a, b = vm_dir(tmp_path, "a"), vm_dir(tmp_path, "b")
    assert (pool.claim(a), pool.claim(b)) == (5000, 5001)
    assert pool.claim(a) == 5000  # again (a restart, a new agent): the same uid
    assert UidPool(base=5000, count=3, registry=tmp_path / "uids").claim(b) == 5001


def test_a_uid_whose_vm_is_gone_is_free_again_and_a_full_range_is_refused(
        tmp_path: Path) -> None:
    pool = UidPool(base=5000, count=2, registry=tmp_path / "uids")
    a, b, c = (vm_dir(tmp_path, n) for n in "abc")
    pool.claim(a)
    pool.claim(b)
    with pytest.raises(DriverError, match="no free QEMU uid: all 2 uids from 5000"):
        pool.claim(c)
    shutil.rmtree(a)  # removed without release (a crash): the claim is stale
    assert pool.claim(c) == 5000
    pool.release(b)
    d = vm_dir(tmp_path, "d")
    assert pool.claim(d) == 5001


def test_a_recorded_uid_taken_by_another_vm_is_not_shared(tmp_path: Path) -> None:
    pool = UidPool(base=5000, count=4, registry=tmp_path / "uids")
    a = vm_dir(tmp_path, "a")
    pool.claim(a)
    copy = vm_dir(tmp_path, "copy")
    (copy / "uid").write_text("5000\n")  # e.g. a directory restored from elsewhere
    assert pool.claim(copy) == 5001


def test_a_bad_range_is_refused() -> None:
    with pytest.raises(DriverError, match="invalid QEMU uid range"):
        UidPool(base=0, count=10)


def test_files_are_handed_over_and_given_back(tmp_path: Path) -> None:
    d = vm_dir(tmp_path, "a")
    (d / "uid").write_text("5000\n")
    disk, seed, vol = (tmp_path / n for n in ("disk", "seed", "vol"))
    for f in (disk, seed, vol):
        f.write_bytes(b"x")
    grant(d, 5000, disk, "boot")
    grant(d, 5000, seed, "seed", writable=False)
    grant(d, 5000, vol, "vol-1")
    assert (os.stat(disk).st_uid, os.stat(disk).st_mode & 0o777) == (5000, 0o600)
    assert os.stat(seed).st_mode & 0o777 == 0o400
    revoke(d, "vol-1")
    assert os.stat(vol).st_uid == 0 and set(granted(d)) == {"boot", "seed"}
    revoke_all(d, keep={"boot": disk})
    assert os.stat(seed).st_uid == 0 and os.stat(disk).st_uid == 5000
    other = vm_dir(tmp_path, "b")
    (other / "uid").write_text("5001\n")
    grant(d, 5000, vol, "vol-1")
    grant(other, 5001, vol, "vol-1")  # attached to b since (a was stopped, say)
    revoke_all(d)
    assert os.stat(vol).st_uid == 5001  # a's leftovers do not take b's volume away
    link = tmp_path / "link"
    link.symlink_to("/etc/shadow")
    with pytest.raises(DriverError, match="not a regular file"):
        grant(d, 5000, link, "x")
    assert os.stat("/etc/shadow").st_uid == 0


def fake_cgroupfs(root: Path, controllers: str) -> Path:
    """A directory shaped like a cgroup2 mount: what a kernel would show (the files only)."""
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers)
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_limits_follow_the_vm_size() -> None:
    got = limits(2, 1024)
    assert got["cpu.max"] == "200000 100000"  # two whole CPUs
    assert int(got["memory.max"]) == (1024 + 256 + 128) * 2**20
    assert got["memory.swap.max"] == "0" and int(got["pids.max"]) > 256


def test_a_vm_cgroup_gets_its_limits_where_the_controllers_exist(tmp_path: Path) -> None:
    root = fake_cgroupfs(tmp_path / "cg", "cpu memory pids io")
    groups = VmCgroups(root)
    path = root / "cumulo" / "i-1"
    path.mkdir(parents=True)  # the kernel would make the files at mkdir; here: their names
    for name in ("cpu.max", "memory.max", "pids.max", "cgroup.procs"):
        (path / name).write_text("max")
    (root / "cumulo" / "cgroup.controllers").write_text("cpu memory pids")
    (root / "cumulo" / "cgroup.subtree_control").write_text("")
    assert groups.prepare("i-1", 2, 512) == (path,)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (path / "cpu.max").read_text() == "200000 100000"
    assert (path / "memory.max").read_text() == str((512 + 256 + 64) * 2**20)
    assert not (path / "memory.swap.max").exists()  # no swap controller file: not invented
    groups.remove("i-1")


def test_without_controllers_the_vm_is_grouped_and_the_agent_warns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_cgroupfs(tmp_path / "cg", "hugetlb")
    groups = VmCgroups(root)
    assert groups.prepare("i-1", 1, 128) == (root / "cumulo" / "i-1",)
    groups.prepare("i-2", 1, 128)
    out = capsys.readouterr().out
    assert out.count("has the controllers cpu, memory, pids: VMs run without") == 1  # said once


def test_no_cgroup2_means_no_cgroup_and_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:21 / /proc rw,relatime shared:5 - proc proc rw\n")
    assert cgroup2_mount(info) is None
    info.write_text("35 24 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(info) == Path("/sys/fs/cgroup/unified")
    groups = VmCgroups(None)
    assert groups.prepare("i-1", 1, 128) == ()
    out = capsys.readouterr().out
    assert "no cgroup v2 hierarchy" in out and "controllers cpu, memory, pids" in out


# A hybrid host (this one's mounts): cpu, memory, pids bound to cgroup v1; cgroup v2 has none.
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_v1_mounts_are_found_by_their_super_options(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(HYBRID)
    assert v1_mounts(("cpu", "memory", "pids"), info) == {
        "cpu": Path("/sys/fs/cgroup/cpu"), "memory": Path("/sys/fs/cgroup/memory"),
        "pids": Path("/sys/fs/cgroup/pids")}  # fmt: skip
    assert cgroup2_mount(info) == Path("/sys/fs/cgroup/unified")
    # systemd-era layout: cpu and cpuacct co-mounted (one hierarchy, two names for its path);
    # optional fields (shared:N) before the " - "; no memory hierarchy at all
    info.write_text("25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup"
                    " rw,cpu,cpuacct\n26 24 0:23 / /sys/fs/cgroup/pids rw shared:10 - cgroup"
                    " cgroup rw,pids\n")
    assert v1_mounts(("cpu", "memory", "pids"), info) == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"), "pids": Path("/sys/fs/cgroup/pids")}
    assert cgroup2_mount(info) is None
    info.write_text("35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert v1_mounts(("cpu", "memory", "pids"), info) == {}  # v2 only: nothing to add


def test_v1_limits_say_the_same_as_the_v2_ones() -> None:
    v2 = limits(2, 1024)
    assert v1_limits("cpu", 2, 1024) == {"cpu.cfs_period_us": "100000",
                                         "cpu.cfs_quota_us": "200000"}  # two whole CPUs
    memory = v1_limits("memory", 2, 1024)
    assert list(memory) == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]  # RAM first
    assert set(memory.values()) == {v2["memory.max"]}  # RAM + swap = RAM: no swap
    assert v1_limits("pids", 2, 1024) == {"pids.max": v2["pids.max"]}
    assert v1_limits("cpuset", 2, 1024) == {}


def fake_v1(root: Path, vm: str, files: dict[str, list[str]]) -> dict[str, Path]:
    """Directories shaped like v1 hierarchies with the VM's directory and its files made (the
    kernel would make them at mkdir)."""
    out = {}
    for controller, names in files.items():
        out[controller] = root / controller
        d = out[controller] / "cumulo" / vm
        d.mkdir(parents=True)
        for name in names:
            (d / name).write_text("max")
    return out


def test_a_hybrid_host_limits_the_vm_in_v1_and_groups_it_in_v2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = fake_cgroupfs(tmp_path / "unified", "hugetlb")
    v1 = fake_v1(tmp_path, "i-1.s", {
        "cpu": ["cpu.cfs_period_us", "cpu.cfs_quota_us"],
        "memory": ["memory.limit_in_bytes"],  # no swap accounting: no memsw file
        "pids": ["pids.max"]})  # fmt: skip
    groups = VmCgroups(v2, v1, scope="s")
    got = groups.prepare("i-1", 2, 512)
    assert got == (v2 / "cumulo" / "i-1.s", *(v1[c] / "cumulo" / "i-1.s" for c in v1))
    assert "controllers" not in capsys.readouterr().out  # every limit is set: no warning
    cpu, memory, pids = got[1:]
    assert (cpu / "cpu.cfs_quota_us").read_text() == "200000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (memory / "memory.limit_in_bytes").read_text() == str((512 + 256 + 64) * 2**20)
    assert not (memory / "memory.memsw.limit_in_bytes").exists()  # not invented
    assert (pids / "pids.max").read_text() == str(256 + 8)
    for d in got[1:]:
        for f in d.iterdir():
            f.unlink()  # emptied, as the kernel's are once QEMU is gone
    VmCgroups(v2, v1, scope="s").remove("i-1")  # a restarted agent: it remembers nothing
    assert not any(d.exists() for d in got)


def test_a_hybrid_host_warns_of_a_v1_hierarchy_it_cannot_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = fake_cgroupfs(tmp_path / "unified", "hugetlb")
    v1 = fake_v1(tmp_path, "i-1", {"cpu": [], "pids": []})
    v1["memory"] = tmp_path / "memory"
    v1["memory"].write_text("")  # not a directory: mkdir under it fails
    groups = VmCgroups(v2, v1)
    assert groups.prepare("i-1", 1, 128) == (
        v2 / "cumulo" / "i-1", v1["cpu"] / "cumulo" / "i-1", v1["pids"] / "cumulo" / "i-1")
    out = capsys.readouterr().out
    assert "cannot create cgroups under" in out and "the controllers memory: VMs run" in out


def test_without_cgroup2_a_hybrid_host_still_limits_in_v1(tmp_path: Path) -> None:
    v1 = fake_v1(tmp_path, "i-1", {"memory": ["memory.limit_in_bytes"]})
    assert VmCgroups(None, v1).prepare("i-1", 1, 128) == (v1["memory"] / "cumulo" / "i-1",)
    assert (v1["memory"] / "cumulo" / "i-1" / "memory.limit_in_bytes").read_text() == str(
        (128 + 256 + 16) * 2**20)
