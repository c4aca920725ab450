"""Block volumes on a running QEMU, over its QMP socket (the QemuDriver's volume calls).

Everything is read back from QEMU (qom-list, query-pci, query-named-block-nodes), never kept
in memory, so a new agent sees what an earlier one attached. Names come from qemu_argv: the
device id is the volume id; nodes "<vol>-thr" (throttle) over "<vol>-fmt" (qcow2); throttle
group "<vol>-tg"; TLS-PSK credentials "<vol>-tls" (a volume over NBD); slots are PCIe root
ports "hp0".."hp{MAX_VOLUMES-1}".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cumulo.agent.drivers.base import (
    MAX_VOLUMES,
    DetachTimeout,
    DriverError,
    LocalFile,
    NbdExport,
    VolumeAttachment,
)
from cumulo.agent.drivers.qemu_argv import (
    fmt_node,
    hotplug_port,
    nbd_blockdev,
    spare_node,
    throttle_group,
    throttle_group_id,
    tls_creds,
    tls_creds_id,
    top_node,
    volume_blockdev,
    volume_device,
)
from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.domain.ids import is_id

QMP_TIMEOUT_S = 5.0
POLL_S = 0.1
RELEASE_WAIT_S = 10.0  # how long an unplugged volume's block node may stay "in use"
SNAPSHOT_TIMEOUT_S = 3600.0


async def _qmp(sock: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    return await qmp_execute(sock, command, arguments, timeout=QMP_TIMEOUT_S)


async def _peripherals(sock: Path) -> set[str]:
    """The ids of the user-created devices (our volumes are named by their volume id)."""
    children = await _qmp(sock, "qom-list", {"path": "/machine/peripheral"})
    return {str(c["name"]) for c in children}


async def _node_names(sock: Path) -> set[str]:
    nodes = await _qmp(sock, "query-named-block-nodes", {"flat": True})
    return {str(n["node-name"]) for n in nodes}


async def _objects(sock: Path) -> set[str]:
    children = await _qmp(sock, "qom-list", {"path": "/objects"})
    return {str(c["name"]) for c in children}


async def attached(sock: Path) -> set[str]:
    """Volumes the VM holds: a device, or block nodes left by an unfinished attach/detach."""
    held = {d for d in await _peripherals(sock) if d.startswith("vol-") and is_id(d)}
    for node in await _node_names(sock):
        for suffix in ("-thr", "-fmt", "-nbd"):
            vol = node.removesuffix(suffix)
            if node.endswith(suffix) and vol.startswith("vol-") and is_id(vol):
                held.add(vol)
    return held


async def _used_ports(sock: Path) -> set[str]:
    """Root ports (by qdev id) with a device behind them, including ones being unplugged."""
    used: set[str] = set()
    for bus in await _qmp(sock, "query-pci"):
        for dev in bus.get("devices", []):
            bridge = dev.get("pci_bridge")
            if bridge is not None and bridge.get("devices"):
                used.add(str(dev.get("qdev_id", "")))
    return used


async def attach(sock: Path, vm_id: str, att: VolumeAttachment, psk_dir: Path) -> None:
    """Hot-plug; a volume over NBD opens with the TLS-PSK key already written in `psk_dir`."""
    vol = att.volume_id
    if vol in await _peripherals(sock):
        return
    await _release_nodes(sock, vol)  # leftovers of an attach interrupted half-way
    used = await _used_ports(sock)
    free = [i for i in range(MAX_VOLUMES) if hotplug_port(i) not in used]
    if not free:
        raise DriverError(
            f"cannot attach {vol} to {vm_id}: all {MAX_VOLUMES} volume slots are in use"
        )
    if isinstance(att.source, LocalFile) and not att.source.path.is_file():
        raise DriverError(f"cannot attach {vol} to {vm_id}: {att.source.path} does not exist")
    try:
        if not isinstance(att.source, LocalFile):
            await _qmp(sock, "object-add", tls_creds(vol, psk_dir))
        await _qmp(sock, "object-add", throttle_group(att))
        await _qmp(sock, "blockdev-add", volume_blockdev(att))
        await _qmp(sock, "device_add", volume_device(att, free[0]))
    except DriverError as exc:
        with contextlib.suppress(DriverError):
            if vol not in await _peripherals(sock):
                await _release_nodes(sock, vol)
        raise DriverError(f"cannot attach {vol} to {vm_id}: {exc}") from exc


async def detach(sock: Path, vm_id: str, vol: str, timeout_s: float) -> None:
    if vol in await _peripherals(sock):
        try:
            await _qmp(sock, "device_del", {"id": vol})
        except DriverError as exc:
            # A repeated request while the guest still holds the disk is not an error.
            if "in progress" not in str(exc) and "pending" not in str(exc):
                raise
        deadline = time.monotonic() + timeout_s
        while vol in await _peripherals(sock):
            if time.monotonic() >= deadline:
                raise DetachTimeout(
                    f"volume {vol} is still attached to {vm_id}: the guest did not release"
                    f" the disk within {timeout_s:g}s (is it mounted or in use?)"
                )
            await asyncio.sleep(POLL_S)
    await _release_nodes(sock, vol)


async def _release_nodes(sock: Path, vol: str) -> None:
    """Remove the volume's block nodes and throttle group (the device must be gone)."""
    nodes = await _node_names(sock)
    for node in (top_node(vol), fmt_node(vol), spare_node(vol)):
        if node in nodes:
            await _blockdev_del(sock, node)
            nodes = await _node_names(sock)  # deleting the top node frees its children
    objects = await _objects(sock)
    for obj in (throttle_group_id(vol), tls_creds_id(vol)):
        if obj in objects:
            await _qmp(sock, "object-del", {"id": obj})


async def _blockdev_del(sock: Path, node: str) -> None:
    """QEMU drops an unplugged device from /machine/peripheral before the device lets go of
    its block backend (finalized later, after an RCU grace period), so the node can still be
    "in use" for a moment: retry that, briefly (seen under CI load)."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        try:
            await _qmp(sock, "blockdev-del", {"node-name": node})
            return
        except DriverError as exc:
            if "in use" not in str(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(POLL_S)


async def resize(sock: Path, vm_id: str, att: VolumeAttachment, size_bytes: int) -> None:
    """Grow the guest's disk to `size_bytes` (a no-op when it is that large already)."""
    vol = att.volume_id
    sizes = await _node_sizes(sock)
    if top_node(vol) not in sizes:
        raise DriverError(f"cannot resize {vol}: it is not attached to {vm_id}")
    if isinstance(att.source, NbdExport):
        if sizes[top_node(vol)] >= size_bytes:
            return
        await _reconnect_grown(sock, vm_id, vol, att.source, size_bytes, sizes)
    await _qmp(sock, "block_resize", {"node-name": top_node(vol), "size": size_bytes})


async def _node_sizes(sock: Path) -> dict[str, int]:
    nodes = await _qmp(sock, "query-named-block-nodes", {"flat": True})
    return {str(n["node-name"]): int(n["image"]["virtual-size"]) for n in nodes}


async def _reconnect_grown(sock: Path, vm_id: str, vol: str, src: NbdExport,
                           size_bytes: int, sizes: dict[str, int]) -> None:
    """Put the volume's throttle node on a new NBD connection that sees the grown export.

    QEMU 7.2's NBD client keeps the size of its handshake for the life of the node (a
    block_resize beyond it fails: "Cannot grow NBD nodes"), but a new connection sees the
    new size: open one under the node name not in use (fmt_node/spare_node), point the
    throttle node's `file` at it (blockdev-reopen; the old client node goes with its last
    reference), then block_resize tells the guest. The device never loses its backend, so
    the guest sees no I/O error, only a capacity change."""
    names = [fmt_node(vol), spare_node(vol)]
    if all(n in sizes for n in names):  # a grow cut short: drop the node nobody uses
        for n in names:
            with contextlib.suppress(DriverError):  # "in use": the throttle node's child
                await _qmp(sock, "blockdev-del", {"node-name": n})
        sizes = await _node_sizes(sock)
    new = next(n for n in names if n not in sizes)
    await _qmp(sock, "blockdev-add", nbd_blockdev(vol, src, new))
    try:
        seen = (await _node_sizes(sock))[new]
        if seen < size_bytes:
            raise DriverError(f"cannot grow {vol} on {vm_id} yet: its export has {seen} "
                              f"bytes, not {size_bytes} (the storage host grows it first)")
        await _qmp(sock, "blockdev-reopen", {"options": [{
            "driver": "throttle", "node-name": top_node(vol),
            "throttle-group": throttle_group_id(vol), "file": new}]})
    except BaseException:
        with contextlib.suppress(DriverError):
            await _qmp(sock, "blockdev-del", {"node-name": new})
        raise
    old = next(n for n in names if n != new)
    if old in await _node_names(sock):  # one hot-plugged or grown into is the monitor's too
        await _blockdev_del(sock, old)


async def snapshot(sock: Path, vm_id: str, vol: str, target: Path,
                   prepare: Callable[[Path], None] | None = None) -> None:
    """blockdev-backup sync=full into a fresh qcow2: a point-in-time copy, taken online.
    `prepare` is called with the new target file before QEMU opens it (to hand it over)."""
    nodes = await _qmp(sock, "query-named-block-nodes", {"flat": True})
    source = next((n for n in nodes if n.get("node-name") == fmt_node(vol)), None)
    if source is None:
        raise DriverError(f"cannot snapshot {vol}: it is not attached to {vm_id}")
    size = int(source["image"]["virtual-size"])
    if target.exists():
        raise DriverError(f"cannot snapshot {vol}: {target} already exists")
    dst, job = f"{vol}-dst", f"{vol}-backup"
    await _cancel_job(sock, job, dst)
    try:
        await _run("qemu-img", "create", "-q", "-f", "qcow2", str(target), str(size))
        if prepare is not None:
            prepare(target)
        await _qmp(sock, "blockdev-add", {
            "driver": "qcow2", "node-name": dst,
            "file": {"driver": "file", "filename": str(target)},
        })  # fmt: skip
        await _qmp(sock, "blockdev-backup", {
            "job-id": job, "device": fmt_node(vol), "target": dst, "sync": "full",
            "auto-finalize": True, "auto-dismiss": False,
        })  # fmt: skip
        await _wait_job(sock, job, vol)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(DriverError):
            await _cancel_job(sock, job, dst)


async def _wait_job(sock: Path, job: str, vol: str) -> None:
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
    while True:
        jobs = {str(j["id"]): j for j in await _qmp(sock, "query-jobs")}
        info = jobs.get(job)
        if info is None:
            raise DriverError(f"snapshot of {vol}: backup job {job} vanished")
        if info.get("status") == "concluded":
            await _qmp(sock, "job-dismiss", {"id": job})
            if info.get("error"):
                raise DriverError(f"snapshot of {vol} failed: {info['error']}")
            return
        if time.monotonic() > deadline:
            raise DriverError(f"snapshot of {vol} did not finish in {SNAPSHOT_TIMEOUT_S:g}s")
        await asyncio.sleep(POLL_S)


async def _cancel_job(sock: Path, job: str, node: str) -> None:
    """Clean up a backup job and its target node (left by a failure or an agent restart)."""
    jobs = {str(j["id"]): j for j in await _qmp(sock, "query-jobs")}
    if job in jobs:
        if jobs[job].get("status") != "concluded":
            with contextlib.suppress(DriverError):
                await _qmp(sock, "job-cancel", {"id": job, "force": True})
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                jobs = {str(j["id"]): j for j in await _qmp(sock, "query-jobs")}
                if jobs.get(job, {}).get("status") in (None, "concluded"):
                    break
                await asyncio.sleep(POLL_S)
        if job in jobs:
            with contextlib.suppress(DriverError):
                await _qmp(sock, "job-dismiss", {"id": job})
    if node in await _node_names(sock):
        await _qmp(sock, "blockdev-del", {"node-name": node})


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"{argv[0]} failed: {err.decode(errors='replace').strip()}")
