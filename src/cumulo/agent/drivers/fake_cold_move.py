"""Cold moves between fake hosts (the QEMU driver's qemu_cold_move, one step per look).

The destination "exports" an empty disk on (address, nbd_port) of the FakeFabric; the
source's copy advances one disk chunk each time it is asked for its status, and at the last
one the bytes really move (the destination's file gets the source's) and the source says
COMPLETED with the digest of its disk. `FakeHost.corrupt_copies` names VMs whose copy
arrives with one byte changed (the check must catch it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from cumulo.agent.drivers.base import (
    DriverError,
    IncomingMigration,
    MigrationState,
    MigrationStatus,
    VMSpec,
    check_migration_address,
)
from cumulo.agent.drivers.fake_migration import DISK_STEPS, FakeMigration

if TYPE_CHECKING:
    from cumulo.agent.drivers.fake_host import FakeHost

_ENDED = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


def digest(path: Path | None) -> str:
    """The fake's disk digest: its file's bytes (none: an empty disk)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def prepare(host: FakeHost, spec: VMSpec, address: str, disk_bytes: int, check_paths: bool,
            live: bool) -> IncomingMigration:
    check_migration_address(address)
    mig = host.migrations.get(spec.vm_id)
    if mig is not None and mig.cold and mig.role == "destination":
        return mig.incoming
    if live:
        raise DriverError(f"cannot receive {spec.vm_id}: it already runs on this host")
    if check_paths and spec.boot_disk.exists():
        raise DriverError(
            f"cannot receive {spec.vm_id}: its boot disk {spec.boot_disk} already exists")
    if disk_bytes <= 0:
        raise DriverError(f"cannot receive {spec.vm_id}: disk size {disk_bytes} <= 0")
    if check_paths:
        spec.boot_disk.write_bytes(b"")
    port = next(host.fabric.ports)
    incoming = IncomingMigration(spec.vm_id, address, port, "root", 0)
    host.fabric.listeners[(address, port)] = host
    host.migrations[spec.vm_id] = FakeMigration(
        "destination", incoming, MigrationState.INCOMING, disk_bytes, cold=True,
        disk_created=spec.boot_disk if check_paths else None)
    return incoming


def copy_out(host: FakeHost, spec: VMSpec, incoming: IncomingMigration, live: bool) -> None:
    if live:
        raise DriverError(f"cannot copy {spec.vm_id} cold: it is running")
    mig = host.migrations.get(spec.vm_id)
    if mig is not None and mig.role == "destination":
        raise DriverError(f"cannot copy {spec.vm_id}: it is still arriving on this host")
    if mig is not None and mig.state not in _ENDED:
        return  # already under way
    arriving = _arriving(host, spec.vm_id, incoming)
    host.migrations[spec.vm_id] = FakeMigration(
        "source", incoming, MigrationState.COPYING_DISKS,
        arriving.disk_bytes if arriving is not None else 0, cold=True, disk=spec.boot_disk)


def status(host: FakeHost, vm_id: str, mig: FakeMigration) -> MigrationStatus:
    if mig.role == "destination" and mig.state is MigrationState.INCOMING and (
            mig.incoming.host, mig.incoming.nbd_port) not in host.fabric.listeners:
        mig.state, mig.reason = MigrationState.FAILED, "the destination's disk export is gone"
    if mig.role == "source" and mig.state is MigrationState.COPYING_DISKS:
        arriving = _arriving(host, vm_id, mig.incoming)
        if arriving is None:
            mig.state = MigrationState.FAILED
            mig.reason = "the disk copy failed: the destination closed the connection"
        else:
            mig.step += 1
            if mig.step >= DISK_STEPS:
                target = arriving.disk_created
                if target is not None and mig.disk is not None and mig.disk.is_file():
                    data = bytearray(mig.disk.read_bytes())
                    if vm_id in host.corrupt_copies and data:
                        data[len(data) // 2] ^= 0xFF
                    target.write_bytes(bytes(data))
                mig.state, mig.checksum = MigrationState.COMPLETED, digest(mig.disk)
                mig.total_s = 0.2
    return mig.status(vm_id)


def checksum(host: FakeHost, vm_id: str) -> str:
    mig = host.migrations.get(vm_id)
    if mig is None or not mig.cold or mig.role != "destination":
        raise DriverError(f"no cold move of {vm_id} arrives on this host")
    if not mig.checksum:  # stop serving, then digest what arrived
        host.fabric.listeners.pop((mig.incoming.host, mig.incoming.nbd_port), None)
        mig.checksum, mig.state = digest(mig.disk_created), MigrationState.COMPLETED
    return mig.checksum


def cancel(host: FakeHost, vm_id: str, mig: FakeMigration) -> None:
    if mig.role == "destination":
        forget(host, vm_id, remove_disk=True)
    elif mig.state not in _ENDED:
        mig.state, mig.reason = MigrationState.CANCELLED, "cancelled on request"


def finish(host: FakeHost, vm_id: str, mig: FakeMigration) -> None:
    if mig.state is not MigrationState.COMPLETED:
        side = "arrival" if mig.role == "destination" else "move"
        raise DriverError(f"cannot finish the {side} of {vm_id}: it is {mig.state}")
    if mig.role == "source":
        host.vms.pop(vm_id, None)  # its stopped VM's record leaves with it
        if mig.disk is not None:
            mig.disk.unlink(missing_ok=True)
    forget(host, vm_id, remove_disk=False)


def forget(host: FakeHost, vm_id: str, remove_disk: bool) -> None:
    mig = host.migrations.pop(vm_id, None)
    if mig is None or mig.role != "destination":
        return
    host.fabric.listeners.pop((mig.incoming.host, mig.incoming.nbd_port), None)
    if remove_disk and mig.disk_created is not None:
        mig.disk_created.unlink(missing_ok=True)


def _arriving(host: FakeHost, vm_id: str, incoming: IncomingMigration) -> FakeMigration | None:
    dest = host.fabric.listeners.get((incoming.host, incoming.nbd_port))
    mig = getattr(dest, "migrations", {}).get(vm_id)
    return mig if isinstance(mig, FakeMigration) and mig.cold else None
