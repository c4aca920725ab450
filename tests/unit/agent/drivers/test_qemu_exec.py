"""The launcher joins every cgroup it is given before it execs QEMU (here: /bin/true)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cumulo.agent.drivers.qemu_argv import LAUNCHER


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
