"""The driver contract for volumes of another host (VolumeAttachment over NBD), on both
drivers: cold-attached at start and hot-plugged, seen by a new driver, idempotent, unplugged.
The export is a real qemu-storage-daemon on loopback (TLS-PSK), as a storage host serves
it; the QEMU driver also shows that a wrong key opens nothing and leaves nothing held, and
that the key file it hands the VM goes with the volume."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError, NbdExport, VolumeAttachment
from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.agent.storage.nbd_exports import DaemonExporter, ExportSpec
from tests.conftest import free_port
from tests.contract.test_driver_contract import Harness, harness, qemu_img_info, tiny_guest

GIB = 2**30

__all__ = ["harness", "tiny_guest"]  # the fixtures, shared


@pytest.fixture
async def exports(tmp_path: Path) -> AsyncIterator[tuple[DaemonExporter, Path]]:
    ex = DaemonExporter(tmp_path / "nbd", "127.0.0.1", None)
    try:
        yield ex, tmp_path
    finally:
        for vol in sorted(ex.exported()):
            await ex.stop(vol)


async def _export(ex: DaemonExporter, tmp: Path, n: int, key: str) -> VolumeAttachment:
    vol_id = f"vol-{n:017x}"
    disk = tmp / f"{vol_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    spec = ExportSpec(f"{n:032x}", key, free_port())
    await ex.ensure(vol_id, disk, spec)
    return VolumeAttachment(vol_id, NbdExport("127.0.0.1", spec.port, spec.name, key),
                            iops=100, mbps=5)


async def test_volumes_over_nbd_cold_and_hot(harness: Harness,
                                             exports: tuple[DaemonExporter, Path]) -> None:
    d = harness.driver
    ex, tmp = exports
    cold = await _export(ex, tmp, 0xa1, "1" * 64)
    hot = await _export(ex, tmp, 0xa2, "2" * 64)
    spec = dataclasses.replace(harness.spec(), volumes=(cold,))
    await d.start(spec)
    await harness.wait_console(spec.vm_id)
    assert await d.attached_volumes(spec.vm_id) == {cold.volume_id}

    await d.attach_volume(spec.vm_id, hot)
    await d.attach_volume(spec.vm_id, hot)  # idempotent
    assert await harness.reopen().attached_volumes(spec.vm_id) == {cold.volume_id,
                                                                   hot.volume_id}
    await d.detach_volume(spec.vm_id, hot.volume_id, timeout_s=30)
    await d.detach_volume(spec.vm_id, cold.volume_id, timeout_s=30)
    assert await d.attached_volumes(spec.vm_id) == set()
    vm_dir = harness.workdir / "run" / spec.vm_id
    assert not list(vm_dir.glob("psk-*"))  # the keys went with the volumes

    if harness.kind == "qemu":  # a real NBD client: a wrong key opens nothing
        assert isinstance(hot.source, NbdExport)
        wrong = dataclasses.replace(hot, source=dataclasses.replace(hot.source, key="3" * 64))
        with pytest.raises(DriverError, match=hot.volume_id):
            await d.attach_volume(spec.vm_id, wrong)
        assert await d.attached_volumes(spec.vm_id) == set()
        assert not list(vm_dir.glob("psk-*"))
    await d.attach_volume(spec.vm_id, hot)  # everything was released: it plugs in again
    assert await d.attached_volumes(spec.vm_id) == {hot.volume_id}


async def test_a_volume_over_nbd_grows_online(harness: Harness,
                                              exports: tuple[DaemonExporter, Path]) -> None:
    """The storage host grows the exported file under its running daemon, then the driver
    gives the VM the new size; twice, so the QEMU driver's node names alternate."""
    d = harness.driver
    ex, tmp = exports
    vol = await _export(ex, tmp, 0xa3, "4" * 64)
    disk, pid = tmp / f"{vol.volume_id}.qcow2", ex.running(vol.volume_id)
    spec = harness.spec()
    await d.start(spec)
    await harness.wait_console(spec.vm_id)
    await d.attach_volume(spec.vm_id, vol)
    qmp = harness.workdir / "run" / spec.vm_id / "qmp.sock"
    if harness.kind == "qemu":  # before its export grew, the disk stays as it is
        with pytest.raises(DriverError, match="storage host grows it first"):
            await d.resize_volume(spec.vm_id, vol, 2 * GIB)
        assert await _disk_size(qmp, vol.volume_id) == GIB
    for size in (2 * GIB, 3 * GIB):
        await ex.grow(vol.volume_id, disk, size)
        assert qemu_img_info(disk)["virtual-size"] == size
        assert ex.running(vol.volume_id) == pid  # the same daemon serves on
        await d.resize_volume(spec.vm_id, vol, size)
        await harness.reopen().resize_volume(spec.vm_id, vol, size)  # idempotent
        if harness.kind == "qemu":
            assert await _disk_size(qmp, vol.volume_id) == size
    assert await harness.reopen().attached_volumes(spec.vm_id) == {vol.volume_id}
    await d.detach_volume(spec.vm_id, vol.volume_id, timeout_s=30)
    assert await d.attached_volumes(spec.vm_id) == set()  # every node released
    await d.attach_volume(spec.vm_id, vol)  # and it plugs in again, at its new size
    if harness.kind == "qemu":
        assert await _disk_size(qmp, vol.volume_id) == 3 * GIB


async def _disk_size(qmp: Path, vol_id: str) -> int:
    """The size of the VM's virtio disk (its block backend: what the guest is told)."""
    for b in await qmp_execute(qmp, "query-block", timeout=5):
        if b.get("qdev", "").startswith(f"/machine/peripheral/{vol_id}/"):
            return int(b["inserted"]["image"]["virtual-size"])
    raise AssertionError(f"{vol_id} has no disk in the VM")


async def test_an_export_daemon_runs_confined(exports: tuple[DaemonExporter, Path]) -> None:
    """Each export's daemon runs as a uid of its own (not root, no group, no capability,
    no_new_privs) and opens only its own volume's file: asked (over its QMP) to open another
    export's file, it is refused by the kernel. A new exporter (agent restart) adopts it;
    stopped, the file is root's again and the uid free."""
    ex, tmp = exports
    a = await _export(ex, tmp, 0xb1, "5" * 64)
    b = await _export(ex, tmp, 0xb2, "6" * 64)
    pid = ex.running(a.volume_id)
    assert pid is not None
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines())
    uids = {int(u) for u in status["Uid"].split()}
    (uid,) = uids
    assert uid != 0 and {int(g) for g in status["Gid"].split()} == {uid}
    assert status["Groups"].strip() == "" and int(status["CapEff"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    disk_a, disk_b = (tmp / f"{v.volume_id}.qcow2" for v in (a, b))
    assert (disk_a.stat().st_uid, disk_a.stat().st_mode & 0o777) == (uid, 0o600)
    assert disk_b.stat().st_uid not in (0, uid)  # b's daemon's own uid
    d = ex.root / a.volume_id
    with pytest.raises(DriverError, match="Permission denied"):
        await qmp_execute(d / "qmp.sock", "blockdev-add", {
            "driver": "file", "node-name": "other", "filename": str(disk_b)}, timeout=5)
    assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (0, 0o711)  # not its to write in

    assert isinstance(a.source, NbdExport)
    again = DaemonExporter(ex.root, "127.0.0.1", None)  # the agent restarted: adopted
    await again.ensure(a.volume_id, disk_a,
                       ExportSpec(a.source.name, a.source.key, a.source.port))
    assert again.running(a.volume_id) == pid
    await again.stop(a.volume_id)
    assert (disk_a.stat().st_uid, disk_a.stat().st_mode & 0o777) == (0, 0o600)
    assert not (again.uids.registry / str(uid)).exists() and not d.exists()
