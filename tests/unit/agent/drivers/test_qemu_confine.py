"""Per-VM uids (claims shared by every agent on the machine), file hand-over, cgroups."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qemu_cgroup import VmCgroups, cgroup2_mount, limits
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
    assert groups.prepare("i-1", 2, 512) == path
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (path / "cpu.max").read_text() == "200000 100000"
    assert (path / "memory.max").read_text() == str((512 + 256 + 64) * 2**20)
    assert not (path / "memory.swap.max").exists()  # no swap controller file: not invented
    groups.remove("i-1")


def test_without_controllers_the_vm_is_grouped_and_the_agent_warns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_cgroupfs(tmp_path / "cg", "hugetlb")
    groups = VmCgroups(root)
    assert groups.prepare("i-1", 1, 128) == root / "cumulo" / "i-1"
    groups.prepare("i-2", 1, 128)
    out = capsys.readouterr().out
    assert out.count("lacks the controllers cpu, memory, pids") == 1  # said once


def test_no_cgroup2_means_no_cgroup_and_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:21 / /proc rw,relatime shared:5 - proc proc rw\n")
    assert cgroup2_mount(info) is None
    info.write_text("35 24 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(info) == Path("/sys/fs/cgroup/unified")
    groups = VmCgroups(None)
    groups.mount = None
    assert groups.prepare("i-1", 1, 128) is None
    assert "no cgroup v2 hierarchy" in capsys.readouterr().out
