"""Which disks paused a VM, from QMP query-block (the shape QEMU 7.2 answers with)."""

from __future__ import annotations

from cumulo.agent.drivers.qemu_io_errors import parse
from cumulo.domain.disk_errors import BOOT_DISK, DiskIoError

VOL = "vol-0123456789abcdef0"
THROTTLED = ('json:{"throttle-group": "vol-tg", "driver": "throttle", "file": {"driver":'
             ' "qcow2", "file": {"driver": "file", "filename": "/h/volumes/v.qcow2"}}}')


def _block(io_status: str | None, device: str, qdev: str, image: dict[str, object]
           ) -> dict[str, object]:
    block: dict[str, object] = {"device": device, "qdev": qdev, "locked": False,
                                "inserted": {"image": image, "file": image["filename"]}}
    if io_status is not None:
        block["io-status"] = io_status
    return block


def test_the_disks_in_error_their_cause_and_their_files() -> None:
    blocks = [
        _block("failed", "root", "/machine/peripheral/root-dev/virtio-backend",
               {"filename": "/h/instances/i/disk.qcow2",
                "backing-image": {"filename": "/images/tiny/rootfs.qcow2"}}),
        _block(None, "seed", "/machine/peripheral/seed-dev/virtio-backend",
               {"filename": "/h/instances/i/seed.iso"}),
        _block("nospace", "", f"/machine/peripheral/{VOL}/virtio-backend",
               {"filename": THROTTLED, "backing-image": {"filename": "/h/volumes/v.qcow2"}}),
        _block("ok", "", "/machine/peripheral/vol-00000000000000001/virtio-backend",
               {"filename": "/h/volumes/w.qcow2"}),
        _block("nospace", "", "/machine/peripheral/../virtio-backend", {"filename": "/x"}),
    ]
    assert parse(blocks) == (
        DiskIoError(BOOT_DISK, nospace=False, path="/h/instances/i/disk.qcow2"),
        DiskIoError(VOL, nospace=True, path="/h/volumes/v.qcow2"),
    )
    assert parse({"unexpected": True}) == ()


def test_a_network_volume_is_told_apart() -> None:
    """A volume attached over NBD: its throttle node's filtered child is the NBD client
    (format "nbd", a URL for a name): no host file, and `remote`."""
    nbd = {"filename": "nbd://10.250.0.3:10810/0123abcd", "format": "nbd"}
    blocks = [_block("failed", "", f"/machine/peripheral/{VOL}/virtio-backend",
                     {"filename": "json:{...}", "format": "throttle", "backing-image": nbd})]
    assert parse(blocks) == (DiskIoError(VOL, nospace=False, path="", remote=True),)
