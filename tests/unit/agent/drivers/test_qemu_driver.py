"""QEMU driver specifics outside the contract: launch errors, path limits, outliving the agent.

These boot no guest OS (a blank qcow2 disk: the firmware finds nothing and waits), so they
need only qemu-system-x86_64 and qemu-img.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError, MigrationState, PowerState, VMSpec
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.drivers.qemu_migration import SOURCE_PARAMETERS, set_source_capabilities
from cumulo.agent.drivers.qmp import session_for
from cumulo.domain.arch import Arch
from tests.contract.qemu_pids import kill_all

pytestmark = pytest.mark.qemu

VM = "i-0000000000000abcd"


@pytest.fixture
def workdir() -> Iterator[Path]:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("qemu-system-x86_64 and qemu-img are needed")
    path = Path(tempfile.mkdtemp(prefix="cd-"))
    try:
        yield path
    finally:
        for pidfile in path.glob("run/*/qemu.pid"):  # kill only our own QEMUs, by pid
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                if os.fsencode(pidfile) in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
        kill_all(path / "run")  # and their cgroups
        shutil.rmtree(path, ignore_errors=True)


def blank_spec(workdir: Path) -> VMSpec:
    disk = workdir / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    return VMSpec(VM, "blank", Arch.X86_64, 1, 64, disk)


def test_runtime_dir_too_long_for_unix_sockets() -> None:
    with pytest.raises(DriverError, match="too long"):
        QemuDriver(Path("/tmp/" + "x" * 90))


async def test_launch_error_carries_qemu_stderr(workdir: Path) -> None:
    driver = QemuDriver(workdir / "run", accel="tcg")
    not_qcow2 = workdir / "raw.img"
    not_qcow2.write_bytes(b"\0" * 4096)
    spec = VMSpec(VM, "bad", Arch.X86_64, 1, 64, not_qcow2)
    with pytest.raises(DriverError, match=r"failed to start.*qcow2"):
        await driver.start(spec)
    obs = (await driver.observe())[VM]
    assert obs.power is PowerState.CRASHED and "qcow2" in obs.reason


async def test_qemu_outlives_the_process_that_started_it(workdir: Path) -> None:
    spec = blank_spec(workdir)
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from cumulo.agent.drivers.base import VMSpec
        from cumulo.agent.drivers.qemu import QemuDriver
        from cumulo.domain.arch import Arch
        spec = VMSpec({VM!r}, "blank", Arch.X86_64, 1, 64, Path({str(spec.boot_disk)!r}))
        print(asyncio.run(QemuDriver(Path({str(workdir / "run")!r}), "tcg").start(spec)).pid)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    pid = int(out.stdout.decode().split()[-1])  # after any warning the driver logs
    driver = QemuDriver(workdir / "run", accel="tcg")  # the "restarted agent"
    obs = (await driver.observe())[VM]
    assert (obs.power, obs.pid) == (PowerState.RUNNING, pid)
    assert os.getsid(pid) != os.getsid(0)  # its own session: a signal to ours won't reach it
    await driver.force_stop(VM)
    obs = (await driver.observe())[VM]
    assert obs.power is PowerState.STOPPED


async def test_a_reused_pid_is_not_mistaken_for_the_vm(workdir: Path) -> None:
    driver = QemuDriver(workdir / "run", accel="tcg")
    vm_dir = workdir / "run" / VM
    vm_dir.mkdir(parents=True)
    (vm_dir / "qemu.pid").write_text(f"{os.getpid()}\n")  # a live pid that is not our QEMU
    obs = (await driver.observe())[VM]
    assert obs.power is PowerState.CRASHED and str(os.getpid()) in obs.reason
    await driver.force_stop(VM)  # must not kill this test process
    assert (await driver.observe())[VM].power is PowerState.STOPPED


async def test_the_tcg_translation_cache_size_reaches_qemu(workdir: Path) -> None:
    driver = QemuDriver(workdir / "run", accel="tcg", tb_size_mib=16)
    obs = await driver.start(blank_spec(workdir))
    try:
        assert obs.pid is not None
        argv = Path(f"/proc/{obs.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"-accel") + 1] == b"tcg,tb-size=16"  # QEMU accepted it: runs
        assert (await driver.observe())[VM].power is PowerState.RUNNING
    finally:
        await driver.force_stop(VM)


@pytest.mark.parametrize("size", [-1, 4097])
def test_a_bad_translation_cache_size_is_refused(size: int) -> None:
    with pytest.raises(DriverError, match="tb-size"):
        QemuDriver(Path("/tmp/cd-tb"), accel="tcg", tb_size_mib=size)


async def test_an_outgoing_migration_throttles_a_busy_guest_with_auto_converge(
        workdir: Path) -> None:
    """The source's capabilities and parameters, set as a migration sets them, are what QEMU
    7.2 accepts: auto-converge among them (a guest dirtying memory faster than the link is
    slowed until the copy converges), post-copy not, and a downtime limit below QEMU's
    default 300 ms."""
    driver = QemuDriver(workdir / "run", accel="tcg")
    await driver.start(blank_spec(workdir))
    try:
        q = session_for(driver.paths(VM).qmp_sock)
        await set_source_capabilities(q)
        caps = {c["capability"]: c["state"]
                for c in await q.execute("query-migrate-capabilities", timeout=5.0)}
        assert caps["auto-converge"] and caps["pause-before-switchover"] and caps["events"]
        assert not caps["postcopy-ram"]
        params = await q.execute("query-migrate-parameters", timeout=5.0)
        assert params["downtime-limit"] == SOURCE_PARAMETERS["downtime-limit"] < 300
    finally:
        await driver.force_stop(VM)


async def test_an_arrival_whose_agent_was_killed_mid_prepare_is_prepared_again(
        workdir: Path) -> None:
    """Issue 25's storm stall: an agent killed (-9) after launching the incoming QEMU and
    serving it, but before saving what it serves, left a record with no `incoming`; every
    agent started after it died at its first pass (a TypeError), and the host's volumes and
    instances waited with it. The next agent prepares the arrival again instead."""
    disk = workdir / "arriving.qcow2"  # made by prepare_incoming, as on a destination
    spec = VMSpec(VM, "arriving", Arch.X86_64, 1, 64, disk)
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from pathlib import Path
        from cumulo.agent.drivers import qemu_migration
        from cumulo.agent.drivers.base import VMSpec
        from cumulo.agent.drivers.qemu import QemuDriver
        from cumulo.domain.arch import Arch
        served = qemu_migration.serve_incoming
        async def killed_after(*args):  # the agent dies before its record says what it serves
            await served(*args)
            os.kill(os.getpid(), signal.SIGKILL)
        qemu_migration.serve_incoming = killed_after
        spec = VMSpec({VM!r}, "arriving", Arch.X86_64, 1, 64, Path({str(disk)!r}))
        driver = QemuDriver(Path({str(workdir / "run")!r}), "tcg")
        asyncio.run(driver.prepare_incoming(spec, "127.0.0.1", 16 << 20))
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    driver = QemuDriver(workdir / "run", accel="tcg")  # the restarted agent
    left = int((workdir / "run" / VM / "qemu.pid").read_text())
    status = await driver.migration_status(VM)
    assert status is not None and status.state is MigrationState.INCOMING
    incoming = await driver.prepare_incoming(spec, "127.0.0.1", 16 << 20)  # said again
    try:
        gone = Path(f"/proc/{left}/cmdline")  # the half-prepared QEMU is gone (or a zombie)
        assert not gone.exists() or not gone.read_bytes()
        # The new one serves the disk (a connection to its migration port would end it:
        # an incoming stream that breaks makes QEMU exit).
        with socket.create_connection(("127.0.0.1", incoming.nbd_port), timeout=5):
            pass
        status = await driver.migration_status(VM)
        assert status is not None and status.state is MigrationState.INCOMING
        assert await driver.prepare_incoming(spec, "127.0.0.1", 16 << 20) == incoming
    finally:
        await driver.cancel_migration(VM)
    assert await driver.migration_status(VM) is None and not disk.exists()
