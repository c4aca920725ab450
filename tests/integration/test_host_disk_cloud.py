"""Placement and a host's real disk space (issue 17, item 9), with the fake driver: the
host's state dir is a small filesystem of its own; the agent reports what it measures, and
placement refuses an instance it has no room for, saying so, until the filesystem grows."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CUMULO, Cloud, _make


@contextlib.contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "64m") mounted at `where` (created), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def cloud_with_small_fs(driver: str, subdir: str, size: str, config: str = ""
                        ) -> Iterator[tuple[Cloud, Path]]:
    """A cloud whose `subdir` of the state dir (e.g. "hosts/local") is a small filesystem;
    `config` is added to its cumulo.toml (whose last table is [host]). Its processes and VMs
    are stopped before the filesystem goes."""
    for cloud in _make(driver):
        toml = cloud.state_dir / "cumulo.toml"
        toml.write_text(toml.read_text() + config)
        with small_fs(cloud.state_dir / subdir, size) as mount:
            try:
                cloud.start()
                yield cloud, mount
            finally:
                cloud.stop()
                subprocess.run([*CUMULO, "down", "--state-dir", str(cloud.state_dir)],
                               capture_output=True, timeout=120)


def _room(c: Cloud) -> int | None:
    zone = next(z for z in c.json("zone", "list") if z["name"] == "local-1a")
    room: int | None = zone["hosts"][0]["disk_room_mib"]
    return room


def test_placement_refuses_a_host_whose_disk_is_full_and_says_so() -> None:
    with cloud_with_small_fs("fake", "hosts/local", "1m") as (c, mount):
        room = _room(c)
        assert room is not None and room <= 1
        r = c.cli("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano",
                  check=False)
        assert r.returncode != 0
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith("error[no_host_fits]: no host fits: zone local-1a has 1 host: "
                               "1 lacks ")
        assert line.endswith(f" MiB disk (largest free: {room})")
        assert c.json("instance", "list") == []

        # The filesystem grows: the agent reports it within a pass or two; placement follows.
        subprocess.run(["mount", "-o", "remount,size=64g", str(mount)], check=True)
        deadline = time.monotonic() + 30
        while (_room(c) or 0) < 60_000:
            assert time.monotonic() < deadline, "the agent did not report the new space"
            time.sleep(0.5)
        vm = c.json("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano",
                    "--wait")
        assert vm["state"] == "running"
        table = c.cli("zone", "list").stdout
        assert "DISK_MIB_FREE" in table
