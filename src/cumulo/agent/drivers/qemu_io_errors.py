"""Which disks paused a VM (QEMU status "io-error"), read from QMP `query-block`.

Each disk whose write-error policy is `stop` carries an io-status: "nospace" after a write
failed with ENOSPC (the host's filesystem is full), "failed" after any other error, "ok"
otherwise; it is reset to "ok" when the VM runs again (`cont`). The boot disk is the -drive
named "root"; a volume is a -device whose qdev id is its volume id (see qemu_argv), over a
file or, attached across hosts, an NBD client (its storage host did not answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.domain.disk_errors import BOOT_DISK, DiskIoError
from cumulo.domain.ids import is_id

_PERIPHERAL = "/machine/peripheral/"


async def io_errors(sock: Path, timeout: float) -> tuple[DiskIoError, ...]:
    return parse(await qmp_execute(sock, "query-block", timeout=timeout))


def parse(blocks: Any) -> tuple[DiskIoError, ...]:
    """The disks of a `query-block` answer whose io-status is not "ok"."""
    out = []
    for block in blocks if isinstance(blocks, list) else []:
        status = block.get("io-status")
        if status not in ("nospace", "failed"):
            continue
        disk = _disk(block)
        if disk is None:
            continue
        image = block.get("inserted", {}).get("image", {})
        out.append(DiskIoError(disk=disk, nospace=status == "nospace", path=_file(image),
                               remote=_nbd(image)))
    return tuple(out)


def _disk(block: dict[str, Any]) -> str | None:
    if block.get("device") == "root":
        return BOOT_DISK
    qdev = str(block.get("qdev", ""))
    if qdev.startswith(_PERIPHERAL):
        vol = qdev.removeprefix(_PERIPHERAL).split("/")[0]
        if vol.startswith("vol-") and is_id(vol):
            return vol
    return None


def _file(image: dict[str, Any]) -> str:
    """The host file under a node: through filters (a volume's throttle node has a json:
    filename), down to the first plain one."""
    for _ in range(8):
        name = str(image.get("filename", ""))
        if name.startswith("/"):
            return name
        image = image.get("backing-image") or {}
    return ""


def _nbd(image: dict[str, Any]) -> bool:
    """Whether the disk is a network volume: an NBD node under its filters (throttle)."""
    for _ in range(8):
        if image.get("format") == "nbd":
            return True
        image = image.get("backing-image") or {}
    return False
