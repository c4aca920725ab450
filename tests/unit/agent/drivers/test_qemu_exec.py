"""The launcher joins every cgroup it is given and enters the host's network namespace before
it execs QEMU (here: /bin/true, /bin/sleep)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cumulo.agent.drivers.qemu_argv import LAUNCHER
from cumulo.agent.drivers.qemu_cgroup import VmCgroups


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher switches uids: root only")
def test_the_launcher_joins_each_cgroup_it_is_given(tmp_path: Path) -> None:
    groups = [tmp_path / "unified", tmp_path / "memory", tmp_path / "pids"]
    for g in groups:
        g.mkdir()
        (g / "cgroup.procs").write_text("")  # a kernel's: written pid = that process joins
    argv = [sys.executable, "-I", "-S", str(LAUNCHER), "--uid", "65534", "--gid", "65534"]
    for g in groups:
        argv += ["--cgroup", str(g)]
    proc = subprocess.Popen([*argv, "--", "/bin/true"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and int(out) > 0
    for g in groups:
        assert (g / "cgroup.procs").read_text() == str(proc.pid), g


@pytest.mark.skipif(os.geteuid() != 0, reason="netns and uids: root only")
def test_the_launcher_enters_the_namespace_in_its_cgroups(tmp_path: Path) -> None:
    """Entered by setns, not `ip netns exec`: that one gives its command a fresh /sys, where
    no cgroup is mounted, and QEMU ran in none of its cgroups (real ones here: the machine's
    cgroup v2, and the v1 memory hierarchy where there is one)."""
    groups = VmCgroups.of_machine(scope=tmp_path.name[-10:])
    if not groups.roots():
        pytest.skip("no cgroup hierarchy mounted here")
    vm = "i-00000000000c0ffee"
    made = groups.prepare(vm, 1, 64)
    ns = f"cmo-t{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        argv = [sys.executable, "-I", "-S", str(LAUNCHER), "--uid", "65534", "--gid", "65534"]
        for g in made:
            argv += ["--cgroup", str(g)]
        proc = subprocess.run([*argv, "--netns", ns, "--", "/bin/sleep", "30"],
                              stdout=subprocess.PIPE, text=True, timeout=30, check=True)
        pid = int(proc.stdout)
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
        for g in made:
            assert str(pid) in (g / "cgroup.procs").read_text().split(), g
        os.kill(pid, 9)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        groups.remove(vm, 5.0)


def test_the_launcher_refuses_a_namespace_name_that_is_a_path() -> None:
    from cumulo.agent.drivers.qemu_exec import enter_netns

    with pytest.raises(OSError, match="invalid network namespace"):
        enter_netns("../x")
