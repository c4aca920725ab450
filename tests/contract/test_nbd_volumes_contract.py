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
from cumulo.agent.storage.nbd_exports import DaemonExporter, ExportSpec
from tests.conftest import free_port
from tests.contract.test_driver_contract import Harness, harness, tiny_guest

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
        wrong = dataclasses.replace(hot, source=dataclasses.replace(hot.source, key="3" * 64))
        with pytest.raises(DriverError, match=hot.volume_id):
            await d.attach_volume(spec.vm_id, wrong)
        assert await d.attached_volumes(spec.vm_id) == set()
        assert not list(vm_dir.glob("psk-*"))
    await d.attach_volume(spec.vm_id, hot)  # everything was released: it plugs in again
    assert await d.attached_volumes(spec.vm_id) == {hot.volume_id}
