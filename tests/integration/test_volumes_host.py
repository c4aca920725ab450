"""Block volumes on real tiny VMs (TCG): QemuDriver + VolumeReconciler, without the API.

Guest access is the serial console: each VM's user-data installs a probe that, for every
virtio disk whose serial is a cumulo volume, writes 4 MiB of random bytes once (when the disk
carries no marker yet) and prints `VOLPROBE <serial> size=<sectors> sum=<md5>` whenever the
disk appears or changes size. The probe also runs at every later boot (inittab), so the same
line proves what a guest reads after hot-plug, online grow, stop/start and snapshot copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import PowerState, VMSpec
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.drivers.qemu_argv import throttle_group_id, top_node
from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.agent.storage.seed import build_seed_iso
from cumulo.agent.storage.volumes import VolumeStore
from cumulo.agent.volume_reconciler import VolumeReconciler
from cumulo.domain.arch import Arch
from cumulo.protocol import (
    SnapshotAssignment,
    SnapshotObservation,
    VolumeAssignment,
    VolumeObservation,
)

pytestmark = pytest.mark.qemu

PROBE = r"""#!/bin/sh
cat > /sbin/volprobe <<'EOS'
#!/bin/sh
readable() {
    dd if="$1" of=/tmp/volprobe.bin bs=65536 count=80 2>/dev/null &&
        [ "$(wc -c < /tmp/volprobe.bin)" -eq 5242880 ]
}
seen=""
while :; do
    now=""
    for s in /sys/block/vd*; do
        ser=$(cat "$s/serial" 2>/dev/null)
        case "$ser" in vol*) ;; *) continue ;; esac
        dev=/dev/${s##*/}
        key="$ser:$(cat "$s/size")"
        case " $seen " in *" $key "*) now="$now $key"; continue ;; esac
        # A hot-plugged disk can show in /sys a moment before it reads: a read that fails or
        # comes short is tried again at the next round, and is never taken for an unmarked
        # disk to write over, nor printed as the disk's sum. Its first 5 MiB, in /tmp:
        readable "$dev" || continue
        if [ "$(head -c 15 /tmp/volprobe.bin)" != "CUMULO-PROBED-1" ]; then
            dd if=/dev/urandom of="$dev" bs=65536 seek=16 count=64 conv=fsync 2>/dev/null
            printf 'CUMULO-PROBED-1' | dd of="$dev" bs=15 count=1 conv=fsync 2>/dev/null
            sync
            echo "VOLPROBE wrote $ser"
            readable "$dev" || continue
        fi
        sum=$(dd if=/tmp/volprobe.bin bs=65536 skip=16 2>/dev/null | md5sum)  # the 4 MiB
        sum=${sum%% *}
        echo "VOLPROBE $ser size=${key#*:} sum=$sum"
        now="$now $key"
    done
    seen=$now
    sleep 0.3
done
EOS
chmod 755 /sbin/volprobe
echo '::once:/sbin/volprobe' >> /etc/inittab
exec /sbin/volprobe
"""
LINE = re.compile(r"VOLPROBE (vol[0-9a-f]{17}) size=(\d+) sum=([0-9a-f]{32})\r?\n")
GIB_SECTORS = 2**30 // 512
ZEROS_MD5 = "b5cfa9d6c8febd618f91ac2843d50a1c"  # of the 4 MiB the probe checks, before it writes


@dataclass
class Host:
    dir: Path
    image: Path
    cmdline: str
    driver: QemuDriver = field(init=False)
    vrec: VolumeReconciler = field(init=False)

    def __post_init__(self) -> None:
        self.restart_agent()

    def restart_agent(self) -> None:
        """A new driver and reconciler on the same dirs: nothing carried over in memory."""
        self.driver = QemuDriver(self.dir / "run", accel="tcg")
        self.vrec = VolumeReconciler(self.driver, VolumeStore(self.dir), detach_timeout_s=20)

    async def start(self, vm_id: str) -> None:
        d = self.dir / "instances" / vm_id
        if not d.exists():
            d.mkdir(parents=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            str(self.image / "rootfs.qcow2"), str(d / "disk.qcow2")],
                           check=True)  # fmt: skip
            build_seed_iso(d / "seed.iso", instance_id=vm_id, hostname=vm_id[-4:],
                           user_data=PROBE.encode())  # fmt: skip
        spec = VMSpec(vm_id, vm_id[-4:], Arch.X86_64, 1, 128, d / "disk.qcow2",
                      kernel=self.image / "vmlinuz", initrd=self.image / "initrd.img",
                      kernel_cmdline=self.cmdline, seed_iso=d / "seed.iso",
                      volumes=self.vrec.attachments_for(vm_id))  # fmt: skip
        await self.driver.start(spec)

    async def converge(
        self, vols: list[VolumeAssignment], snaps: list[SnapshotAssignment] | None = None
    ) -> tuple[dict[str, VolumeObservation], dict[str, SnapshotObservation]]:
        observed = await self.driver.observe()
        running = {i for i, o in observed.items() if o.power is PowerState.RUNNING}
        v, s = await self.vrec.run_pass(vols, snaps or [], running)
        self.vrec.acknowledge(v, s)
        return {o.id: o for o in v}, {o.id: o for o in s}

    def console(self, vm_id: str) -> str:
        return self.driver.paths(vm_id).console_log.read_text(errors="replace")

    def console_size(self, vm_id: str) -> int:
        path = self.driver.paths(vm_id).console_log
        return path.stat().st_size if path.exists() else 0

    async def probe(
        self, vm_id: str, vol_id: str, after: int, timeout: float = 90
    ) -> tuple[int, str]:
        """The next (size in sectors, md5) the guest prints for the volume after offset `after`."""
        serial = vol_id.replace("-", "")
        path = self.driver.paths(vm_id).console_log
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_bytes()[after:].decode(errors="replace")
            for m in LINE.finditer(text):
                if m.group(1) == serial:
                    return int(m.group(2)), m.group(3)
            if time.monotonic() > deadline:
                raise AssertionError(f"no probe of {vol_id} on {vm_id}; console:\n{text[-3000:]}")
            await asyncio.sleep(0.2)

    async def wait_ready(self, vm_id: str, count: int = 1) -> None:
        path = self.driver.paths(vm_id).console_log
        deadline = time.monotonic() + 120
        while (path.read_text(errors="replace") if path.exists() else "").count(
            "cumulo-tiny: ready"
        ) < count:
            assert time.monotonic() < deadline, path.read_text(errors="replace")[-3000:]
            await asyncio.sleep(0.2)


@pytest.fixture
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    from cumulo.images.tiny import ensure_tiny_image

    image = ensure_tiny_image(Arch.X86_64)
    meta = json.loads((image / "image.json").read_text())
    d = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))  # short: unix socket path limit
    try:
        yield Host(d, image, str(meta["kernel_cmdline"]))
    finally:
        for pidfile in (d / "run").glob("*/qemu.pid"):  # only QEMUs this test started
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                if os.fsencode(pidfile) in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        shutil.rmtree(d, ignore_errors=True)


def vol(vol_id: str, gen: int, **kw: object) -> VolumeAssignment:
    base: dict[str, object] = {"id": vol_id, "size_gib": 1, "iops": 300, "mbps": 20,
                               "desired": "present", "generation": gen}  # fmt: skip
    base.update(kw)
    return VolumeAssignment.model_validate(base)


A, B = "i-000000000000000a1", "i-000000000000000b2"
V, W = "vol-000000000000000c3", "vol-000000000000000d4"
SNAP = "snap-000000000000000e5"


async def test_volume_data_survives_every_move(host: Host) -> None:
    await asyncio.gather(host.start(A), host.start(B))
    await asyncio.gather(host.wait_ready(A), host.wait_ready(B))

    # Hot-plug into A: the guest writes random bytes and prints their checksum.
    mark = host.console_size(A)
    vols, _ = await host.converge([vol(V, 1, attach_to=A)])
    assert (vols[V].state, vols[V].attached_to) == ("in-use", A), vols[V]
    size, written = await host.probe(A, V, mark)
    assert size == GIB_SECTORS and written != ZEROS_MD5
    assert f"VOLPROBE wrote {V.replace('-', '')}" in host.console(A)

    # Throttling is in place (the throttle filter node and its group's limits).
    sock = host.driver.paths(A).qmp_sock
    nodes = await qmp_execute(sock, "query-named-block-nodes", {"flat": True}, timeout=5)
    assert any(n["node-name"] == top_node(V) and n["drv"] == "throttle" for n in nodes)
    blocks = await qmp_execute(sock, "query-block", timeout=5)
    assert any(b.get("inserted", {}).get("node-name") == top_node(V) for b in blocks)
    group = {"path": throttle_group_id(V), "property": "limits"}
    limits = await qmp_execute(sock, "qom-get", group, timeout=5)
    assert (limits["iops-total"], limits["bps-total"]) == (300, 20 * 2**20)

    # Online grow: the guest sees the new size, same bytes.
    mark = host.console_size(A)
    vols, _ = await host.converge([vol(V, 2, attach_to=A, size_gib=2)])
    assert (vols[V].state, vols[V].size_gib) == ("in-use", 2)
    assert await host.probe(A, V, mark) == (2 * GIB_SECTORS, written)

    # Snapshot while attached (crash-consistent copy taken online).
    _, snaps = await host.converge(
        [vol(V, 2, attach_to=A, size_gib=2)],
        [SnapshotAssignment(id=SNAP, volume_id=V, desired="present")],
    )
    assert (snaps[SNAP].state, snaps[SNAP].size_gib) == ("available", 2)

    # Detach from A, attach to B (one pass).
    mark = host.console_size(B)
    vols, _ = await host.converge([vol(V, 3, attach_to=B, size_gib=2)])
    assert (vols[V].state, vols[V].attached_to) == ("in-use", B)
    assert await host.driver.attached_volumes(A) == set()
    assert await host.probe(B, V, mark) == (2 * GIB_SECTORS, written)

    # Agent restart: a new driver and reconciler see the attachment and move it back to A.
    host.restart_agent()
    vols, _ = await host.converge([vol(V, 3, attach_to=B, size_gib=2)])
    assert (vols[V].state, vols[V].attached_to) == ("in-use", B)
    mark = host.console_size(A)
    vols, _ = await host.converge([vol(V, 4, attach_to=A, size_gib=2)])
    assert (vols[V].state, vols[V].attached_to) == ("in-use", A)
    assert await host.probe(A, V, mark) == (2 * GIB_SECTORS, written)

    # Stop/start: the volume stays in use and is cold-attached at the next boot.
    await host.driver.force_stop(A)
    vols, _ = await host.converge([vol(V, 4, attach_to=A, size_gib=2)])
    assert vols == {}  # still in-use, attached to A: nothing changed for the API
    mark = host.console_size(A)
    await host.start(A)
    assert await host.driver.attached_volumes(A) == {V}
    assert await host.probe(A, V, mark) == (2 * GIB_SECTORS, written)

    # A volume made from the snapshot carries the same bytes.
    mark = host.console_size(B)
    vols, _ = await host.converge(
        [vol(V, 4, attach_to=A, size_gib=2), vol(W, 1, attach_to=B, source_snapshot=SNAP)]
    )
    assert (vols[W].state, vols[W].size_gib, vols[W].attached_to) == ("in-use", 2, B)
    assert await host.probe(B, W, mark) == (2 * GIB_SECTORS, written)
    assert "VOLPROBE wrote" not in host.console(B)  # B only ever read

    # Delete while attached: detached first, then the file goes.
    vols, _ = await host.converge([vol(V, 4, attach_to=A, size_gib=2),
                                   vol(W, 2, desired="deleted")])  # fmt: skip
    assert vols[W].state == "deleted"
    assert await host.driver.attached_volumes(B) == set()
    assert not host.vrec.store.has_volume(W)


async def test_full_disk_fails_create_cleanly(host: Host) -> None:
    store = host.vrec.store
    await store.create_volume(V, 1)
    subprocess.run(["qemu-io", "-c", "write -P 0x33 0 8M", str(store.volume_path(V))],
                   check=True, capture_output=True)  # fmt: skip
    await store.snapshot_volume(V, SNAP)
    small = host.dir / "small"
    (small / "volumes").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small / "volumes")],
                   check=True)  # fmt: skip
    try:
        (small / "snapshots").mkdir()
        shutil.copy(store.snapshot_path(SNAP), small / "snapshots")
        rec = VolumeReconciler(host.driver, VolumeStore(small))
        vols, _ = await rec.run_pass([vol(W, 1, source_snapshot=SNAP)], [], set())
        assert vols[0].state == "error" and "No space left" in vols[0].reason, vols[0]
        assert list((small / "volumes").iterdir()) == []  # nothing half-made
        vols, _ = await rec.run_pass([vol(W, 2)], [], set())  # an empty volume fits
        assert vols[0].state == "available"
    finally:
        subprocess.run(["umount", str(small / "volumes")], check=True)
