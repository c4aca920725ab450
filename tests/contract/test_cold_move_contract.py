"""The driver contract's cold moves (a stopped VM's boot disk to another host), run on the
fake and the QEMU driver with the two hosts of test_migration_contract.

For QEMU nothing boots: the source disk is an overlay of the tiny image with bytes of its own
written by qemu-io, the destination a qemu-storage-daemon in the second namespace, and the
copy crosses the veth link; the copy is checked with `qemu-img compare` besides the digests.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from cumulo.agent.drivers import disk_digest, fake_cold_move
from cumulo.agent.drivers.base import MigrationState, PowerState, VMSpec
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.drivers.qemu_migration import Record
from tests.contract.test_migration_contract import Host, Pair, _virtual_size, follow, pair

__all__ = ["pair"]  # the fixture, shared

FAKE_DISK = b"a stopped guest's disk " * 3000


def _stopped_disk(p: Pair, vm_id: str) -> VMSpec:
    if isinstance(p.a.driver, FakeDriver) and p.a.driver.host.fabric.shared is not None:
        pytest.skip("fake cold moves cross one process's fabric only (not hosts in separate"
                    " processes)")
    spec = p.spec(p.a, vm_id)
    if p.image is None:
        spec.boot_disk.write_bytes(FAKE_DISK)
        return spec
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                    str(p.image / "rootfs.qcow2"), "-F", "qcow2", str(spec.boot_disk), "1G"],
                   check=True)  # fmt: skip
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 300M 192k", "-c", "write -P 0 1M 64k",
                    str(spec.boot_disk)], check=True, capture_output=True)  # fmt: skip
    return spec


async def _digest(host: Host, path: Path) -> str:
    if isinstance(host.driver, FakeDriver):
        return fake_cold_move.digest(path)
    return await disk_digest.content_digest(path)


def _live(observed: dict[str, object], vm_id: str) -> bool:
    o = observed.get(vm_id)
    return o is not None and getattr(o, "power", None) in (PowerState.RUNNING, PowerState.PAUSED)


async def test_cold_move_copies_a_stopped_vms_disk_and_checks_it(pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = _stopped_disk(pair, "i-0000000000000c01")
    spec_b = pair.spec(b, spec.vm_id)
    sent_before = await _digest(a, spec.boot_disk)
    incoming = await b.driver.prepare_cold_incoming(spec_b, b.address, _virtual_size(spec))
    assert incoming.migration_port == 0 and spec_b.boot_disk.exists()
    assert await b.driver.prepare_cold_incoming(spec_b, b.address, 1) == incoming  # idempotent
    await a.driver.copy_cold_out(spec, incoming)
    seen = await follow(a.driver, spec.vm_id, timeout=300)
    end = seen[-1]
    assert end.state is MigrationState.COMPLETED and end.role == "source", seen
    assert end.checksum == sent_before and end.downtime_ms is None
    assert end.progress.disk_bytes_copied == end.progress.disk_bytes_total > 0
    export = _helper_pid(b, spec.vm_id)
    assert await b.driver.cold_copy_checksum(spec.vm_id) == end.checksum
    assert export is None or not _runs(export, b"qemu-storage-daemon")  # it stopped serving
    if pair.kind == "qemu":
        same = subprocess.run(["qemu-img", "compare", "-U", str(spec.boot_disk),
                               str(spec_b.boot_disk)], capture_output=True, text=True)
        assert same.returncode == 0, same.stdout + same.stderr
    else:
        assert spec_b.boot_disk.read_bytes() == FAKE_DISK
    assert not _live(dict(await a.driver.observe()), spec.vm_id)  # nothing was started
    assert not _live(dict(await b.driver.observe()), spec.vm_id)

    await b.driver.finish_migration(spec.vm_id)
    await a.driver.finish_migration(spec.vm_id)
    await a.driver.finish_migration(spec.vm_id)  # idempotent
    assert await a.driver.migration_status(spec.vm_id) is None
    assert await b.driver.migration_status(spec.vm_id) is None
    assert not spec.boot_disk.exists()  # the source's copy is gone
    assert await _digest(b, spec_b.boot_disk) == sent_before  # the destination's is the disk
    if isinstance(b.driver, QemuDriver):
        assert not b.driver.paths(spec.vm_id).dir.exists()  # no daemon, no record left


def _helper_pid(host: Host, vm_id: str) -> int | None:
    if not isinstance(host.driver, QemuDriver):
        return None
    record = Record.load(host.driver.paths(vm_id).migration_json)
    assert record is not None and record.helper_pid is not None
    assert _runs(record.helper_pid, b"qemu-storage-daemon")
    return record.helper_pid


def _runs(pid: int, program: bytes) -> bool:
    try:
        return program in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_export(host: Host, vm_id: str) -> None:
    if isinstance(host.driver, FakeDriver):
        host.driver.host.fabric.listeners.clear()
        return
    pid = _helper_pid(host, vm_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_cancel_and_a_lost_export_leave_the_source_disk_and_clean_the_destination(
        pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = _stopped_disk(pair, "i-0000000000000c02")
    spec_b = pair.spec(b, spec.vm_id)
    before = await _digest(a, spec.boot_disk)

    # 1. cancelled, both sides told (the copy may already be over: nothing changes then)
    incoming = await b.driver.prepare_cold_incoming(spec_b, b.address, _virtual_size(spec))
    await a.driver.copy_cold_out(spec, incoming)
    await a.driver.cancel_migration(spec.vm_id)
    await b.driver.cancel_migration(spec.vm_id)
    status = await a.driver.migration_status(spec.vm_id)
    assert status is not None and status.state in (MigrationState.CANCELLED,
                                                   MigrationState.COMPLETED), status
    assert not spec_b.boot_disk.exists() and await b.driver.migration_status(spec.vm_id) is None
    assert await _digest(a, spec.boot_disk) == before

    # 2. the destination's export dies before the copy: it fails, and says why
    incoming = await b.driver.prepare_cold_incoming(spec_b, b.address, _virtual_size(spec))
    _kill_export(b, spec.vm_id)
    await a.driver.copy_cold_out(spec, incoming)
    end = (await follow(a.driver, spec.vm_id, timeout=120))[-1]
    assert end.state is MigrationState.FAILED and "the disk copy failed" in end.reason, end
    print(f"\nlost export: {end.reason}")
    gone = await b.driver.migration_status(spec.vm_id)
    assert gone is not None and gone.state is MigrationState.FAILED and gone.reason
    await a.driver.cancel_migration(spec.vm_id)  # a no-op once failed
    await b.driver.cancel_migration(spec.vm_id)
    assert not spec_b.boot_disk.exists() and await _digest(a, spec.boot_disk) == before
    if isinstance(b.driver, QemuDriver):
        assert not b.driver.paths(spec.vm_id).dir.exists()


async def test_cold_move_refuses_bad_calls(pair: Pair) -> None:
    spec = _stopped_disk(pair, "i-0000000000000c03")
    spec_b = pair.spec(pair.b, spec.vm_id)
    for address in ("not-an-ip", "10.0.0.1; rm -rf /", ""):
        with pytest.raises(Exception, match="invalid migration address"):
            await pair.b.driver.prepare_cold_incoming(spec_b, address, 1 << 30)
    with pytest.raises(Exception, match="already exists"):
        await pair.a.driver.prepare_cold_incoming(spec, pair.a.address, 1 << 30)
    with pytest.raises(Exception, match="<= 0"):
        await pair.b.driver.prepare_cold_incoming(spec_b, pair.b.address, 0)
    with pytest.raises(Exception, match="no cold move"):
        await pair.b.driver.cold_copy_checksum(spec.vm_id)
    assert not spec_b.boot_disk.exists()
