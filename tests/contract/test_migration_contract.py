"""The driver contract's two-host calls: live migration, run on the fake and the QEMU driver.

Two "hosts" are two drivers with their own dirs. For QEMU they are also two network
namespaces joined by a veth pair (made here, removed after; addresses only inside them), and
each QEMU runs in its host's namespace: the disk (NBD) and the memory cross that link.

The guest (the tiny image, TCG, 128 MiB) runs a user-data script that wrote a marker file and
synced it before the migration, then every second bumps a counter file on its boot disk,
syncs, drops its page cache, and prints its uptime, the marker and the counter read back from
the disk: its console on the destination shows the same guest (no new boot, uptime going on,
the marker read from the migrated disk) and writes that went on during the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import (
    IncomingMigration,
    LocalFile,
    MigratingDriver,
    MigrationState,
    MigrationStatus,
    PowerState,
    VMSpec,
    VolumeAttachment,
)
from cumulo.agent.drivers.fake import FakeDriver, FakeHost
from cumulo.agent.drivers.fake_migration import FakeFabric
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.storage.seed import build_seed_iso
from cumulo.domain.arch import Arch
from tests.contract.qemu_pids import kill_all, wait_pid_gone

USER_DATA = b"""#!/bin/sh
echo before-migration > /root/marker
sync
n=0
while :; do
    n=$((n+1))
    echo $n > /root/counter
    sync
    echo 3 > /proc/sys/vm/drop_caches
    read up idle < /proc/uptime
    echo "tick n=$n up=$up marker=$(cat /root/marker) counter=$(cat /root/counter)"
    sleep 1
done
"""
TICK = re.compile(r"tick n=(\d+) up=([\d.]+) marker=(\S*) counter=(\d+)")
Tick = tuple[int, float, str]  # the guest's counter, its uptime, the marker it read
DONE = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


@dataclass
class Host:
    driver: MigratingDriver
    dir: Path
    address: str
    netns: str | None
    crash: Callable[[str], None]


@dataclass
class Pair:
    kind: str
    a: Host
    b: Host
    image: Path | None
    boot_timeout: float = 600.0
    n: int = 0
    specs: dict[str, VMSpec] = field(default_factory=dict)

    def spec(self, host: Host, vm_id: str) -> VMSpec:
        """The VM as `host` runs it: its own disk and seed paths, its own namespace."""
        disk = host.dir / f"{vm_id}.qcow2"
        if self.image is None:
            return VMSpec(vm_id, "mig", Arch.X86_64, 1, 128, disk)
        meta = json.loads((self.image / "image.json").read_text())
        seed = host.dir / f"{vm_id}-seed.iso"
        if not seed.exists():
            build_seed_iso(seed, instance_id=vm_id, hostname="mig", user_data=USER_DATA)
        return VMSpec(
            vm_id=vm_id, hostname="mig", arch=Arch.X86_64, vcpus=1, ram_mib=128,
            boot_disk=disk, kernel=self.image / "vmlinuz", initrd=self.image / "initrd.img",
            kernel_cmdline=str(meta["kernel_cmdline"]), seed_iso=seed, netns=host.netns,
        )  # fmt: skip

    async def start_on_a(self) -> VMSpec:
        self.n += 1
        spec = self.spec(self.a, f"i-{self.n:017x}")
        if self.image is None:
            spec.boot_disk.write_bytes(b"the guest's disk " * 100)
        else:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                 str(self.image / "rootfs.qcow2"), "-F", "qcow2", str(spec.boot_disk)],
                check=True,
            )  # fmt: skip
        await self.a.driver.start(spec)
        return spec

    async def ticks(self, host: Host, vm_id: str, at_least: int = 1) -> list[Tick]:
        """The guest's ticks on `host`'s console (fake: its one boot line stands for them)."""
        if self.image is None:
            at_least = 1
        deadline = time.monotonic() + self.boot_timeout
        while True:
            log = await host.driver.console_log(vm_id)
            if self.image is None:
                found = [(i + 1, 0.0, "fake") for i in range(log.count("cumulo-tiny: ready"))]
            else:
                found = [(int(m[1]), float(m[2]), m[3]) for m in TICK.finditer(log)]
            if len(found) >= at_least:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{vm_id}: no {at_least} ticks on {host.dir}:\n{log[-3000:]}")
            await asyncio.sleep(0.5)

    async def prepare(self, spec_a: VMSpec) -> IncomingMigration:
        spec_b = self.spec(self.b, spec_a.vm_id)
        return await self.b.driver.prepare_incoming(spec_b, self.b.address, _virtual_size(spec_a))


def _virtual_size(spec: VMSpec) -> int:
    if not shutil.which("qemu-img") or spec.boot_disk.stat().st_size < 512:
        return 1 << 30  # the fake's stand-in file
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(spec.boot_disk)],
                         check=True, capture_output=True, text=True).stdout
    return int(json.loads(out)["virtual-size"])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _linked_namespaces() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: 10.251.x.1 in the first, .2 in the second."""
    tag = f"{os.getpid() % 100000:05d}"
    ns = (f"cmig{tag}a", f"cmig{tag}b")
    try:
        for name in ns:
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", ns[0], "link", "add", "mig0", "type", "veth", "peer", "name", "mig1",
            "netns", ns[1])
        for i, name in enumerate(ns):
            _ip("-n", name, "addr", "add", f"10.251.{int(tag) % 250}.{i + 1}/30", "dev", f"mig{i}")
            _ip("-n", name, "link", "set", f"mig{i}", "up")
        yield ns
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(params=["fake", "fake-shared", pytest.param("qemu", marks=pytest.mark.qemu)])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    workdir = Path(tempfile.mkdtemp(prefix="cm-"))
    dirs = (workdir / "a", workdir / "b")
    for d in dirs:
        d.mkdir()
    try:
        if request.param.startswith("fake"):
            fabric = FakeFabric()
            # fake-shared: each host its own fabric object, as in separate processes (the
            # agents of a `cumulo up --hosts N` fake cloud), joined by a shared directory.
            drivers = [FakeDriver(FakeHost(fabric=fabric if request.param == "fake" else
                                           FakeFabric(shared=workdir / "fabric")))
                       for _ in dirs]
            hosts = [Host(d, dirs[i], f"10.0.0.{i + 1}", None, d.simulate_crash)
                     for i, d in enumerate(drivers)]
            yield Pair("fake", hosts[0], hosts[1], None, boot_timeout=5.0)
            return
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("two-host QEMU migration needs root and iproute2 (network namespaces)")
        image: Path = request.getfixturevalue("tiny_image_x86_64")
        with _linked_namespaces() as ns:
            tag = int(ns[0][4:9]) % 250
            qhosts = []
            for i, d in enumerate(dirs):
                runtime = d / "run"
                qhosts.append(Host(QemuDriver(runtime, accel="tcg"), d, f"10.251.{tag}.{i + 1}",
                                   ns[i], _crasher(runtime)))
            try:
                yield Pair("qemu", qhosts[0], qhosts[1], image)
            finally:
                for d in dirs:
                    kill_all(d / "run")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _crasher(runtime: Path) -> Callable[[str], None]:
    def crash(vm_id: str) -> None:
        pid = int((runtime / vm_id / "qemu.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_pid_gone(pid)

    return crash


async def follow(driver: MigratingDriver, vm_id: str, timeout: float) -> list[MigrationStatus]:
    """Every status of the source until the migration ends (its states in order)."""
    seen: list[MigrationStatus] = []
    deadline = time.monotonic() + timeout
    while True:
        status = await driver.migration_status(vm_id)
        assert status is not None
        if not seen or status != seen[-1]:
            seen.append(status)
        if status.state in DONE:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"migration of {vm_id} still {status} after {timeout}s")
        await asyncio.sleep(0.2)


async def assert_clean(host: Host, spec: VMSpec) -> None:
    """Nothing of the VM is left on `host`: no process, no runtime state, no disk."""
    assert spec.vm_id not in await host.driver.observe()
    assert await host.driver.migration_status(spec.vm_id) is None
    assert not (host.dir / f"{spec.vm_id}.qcow2").exists()
    if isinstance(host.driver, QemuDriver):
        assert not host.driver.paths(spec.vm_id).dir.exists()


async def test_migrate_moves_a_running_vm(pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = await pair.start_on_a()
    before = await pair.ticks(a, spec.vm_id, at_least=3)
    incoming = await pair.prepare(spec)
    assert (await b.driver.observe())[spec.vm_id].power is PowerState.PAUSED  # not running yet
    again = await pair.prepare(spec)  # idempotent
    assert again == incoming
    await a.driver.migrate_out(spec.vm_id, incoming)
    seen = await follow(a.driver, spec.vm_id, timeout=900)
    end = seen[-1]
    assert end.state is MigrationState.COMPLETED, seen
    assert end.role == "source" and end.downtime_ms is not None and end.total_s is not None
    states = [s.state for s in seen]
    assert states.index(MigrationState.COMPLETED) == len(states) - 1
    # the guest never ran on both: the destination stays paused until finish
    assert (await b.driver.observe())[spec.vm_id].power is PowerState.PAUSED
    assert (await b.driver.migration_status(spec.vm_id)).state is MigrationState.COMPLETED  # type: ignore[union-attr]
    with pytest.raises(Exception, match="completed"):
        await a.driver.cancel_migration(spec.vm_id)  # too late to cancel

    await b.driver.finish_migration(spec.vm_id)
    await a.driver.finish_migration(spec.vm_id)
    await a.driver.finish_migration(spec.vm_id)  # idempotent
    assert (await b.driver.observe())[spec.vm_id].power is PowerState.RUNNING
    await assert_clean(a, spec)
    assert await b.driver.migration_status(spec.vm_id) is None

    after = await pair.ticks(b, spec.vm_id, at_least=2)
    log_b = await b.driver.console_log(spec.vm_id)
    if pair.kind == "fake":
        assert after == before[:1] and log_b.count("cumulo-tiny: ready") == 1  # no new boot
        assert b.driver.host.vms[spec.vm_id].events == ["boot"]  # type: ignore[attr-defined]
        assert (b.dir / f"{spec.vm_id}.qcow2").read_bytes() == b"the guest's disk " * 100
        return
    assert "cumulo-tiny: ready" not in log_b  # the guest was not booted again
    last_n, last_up, _ = before[-1]
    for n, up, marker in after:
        assert n > last_n and up > last_up, (before, after)  # the same guest, going on
        assert marker == "before-migration"  # read back from the migrated disk
    print(f"\nmigration of {spec.vm_id}: downtime {end.downtime_ms} ms, total {end.total_s} s,"
          f" states {[str(s) for s in dict.fromkeys(states)]}, last progress {seen[-2].progress}")


async def test_cancel_and_dead_destination_leave_the_source_running(pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = await pair.start_on_a()
    await pair.ticks(a, spec.vm_id, at_least=2)
    pid = (await a.driver.observe())[spec.vm_id].pid

    # 1. cancelled during the copy (both sides told, as the control plane will)
    incoming = await pair.prepare(spec)
    await a.driver.migrate_out(spec.vm_id, incoming)
    status = await a.driver.migration_status(spec.vm_id)
    assert status is not None and status.state in (
        MigrationState.COPYING_DISKS, MigrationState.COPYING_MEMORY), status
    await a.driver.cancel_migration(spec.vm_id)
    await b.driver.cancel_migration(spec.vm_id)
    status = await a.driver.migration_status(spec.vm_id)
    assert status is not None and status.state is MigrationState.CANCELLED
    await assert_clean(b, spec)
    obs = (await a.driver.observe())[spec.vm_id]
    assert (obs.power, obs.pid) == (PowerState.RUNNING, pid)
    seen = len(await pair.ticks(a, spec.vm_id))
    if pair.kind == "qemu":
        await pair.ticks(a, spec.vm_id, at_least=seen + 2)  # the guest still runs

    # 2. the destination's QEMU dies during the copy: the migration fails and says why
    incoming = await pair.prepare(spec)
    await a.driver.migrate_out(spec.vm_id, incoming)
    b.crash(spec.vm_id)
    seen_states = await follow(a.driver, spec.vm_id, timeout=300)
    end = seen_states[-1]
    assert end.state is MigrationState.FAILED and end.reason, seen_states
    print(f"\nkilled destination: {end.reason}")
    dest = await b.driver.migration_status(spec.vm_id)
    assert dest is not None and dest.state is MigrationState.FAILED and dest.reason
    await b.driver.cancel_migration(spec.vm_id)
    await assert_clean(b, spec)
    obs = (await a.driver.observe())[spec.vm_id]
    assert (obs.power, obs.pid) == (PowerState.RUNNING, pid)
    if pair.kind == "qemu":
        now = len(await pair.ticks(a, spec.vm_id))
        await pair.ticks(a, spec.vm_id, at_least=now + 2)

    # 3. a source that failed twice still moves
    incoming = await pair.prepare(spec)
    await a.driver.migrate_out(spec.vm_id, incoming)
    end = (await follow(a.driver, spec.vm_id, timeout=900))[-1]
    assert end.state is MigrationState.COMPLETED, end
    await b.driver.finish_migration(spec.vm_id)
    await a.driver.finish_migration(spec.vm_id)
    await assert_clean(a, spec)
    assert (await b.driver.observe())[spec.vm_id].power is PowerState.RUNNING


async def test_migration_refuses_bad_calls(pair: Pair) -> None:
    spec = await pair.start_on_a()
    spec_b = pair.spec(pair.b, spec.vm_id)
    for address in ("not-an-ip", "10.0.0.1; rm -rf /", ""):
        with pytest.raises(Exception, match="invalid migration address"):
            await pair.b.driver.prepare_incoming(spec_b, address, 1 << 30)
    assert not spec_b.boot_disk.exists()
    local = VolumeAttachment("vol-000000000000000aa", LocalFile(pair.b.dir / "vol.qcow2"))
    with pytest.raises(Exception, match="vol-000000000000000aa is a local file"):
        await pair.b.driver.prepare_incoming(dataclasses.replace(spec_b, volumes=(local,)),
                                             pair.b.address, 1 << 30)
    assert not spec_b.boot_disk.exists()
    with pytest.raises(Exception, match="already runs"):
        await pair.a.driver.prepare_incoming(spec, pair.a.address, 1 << 30)
    with pytest.raises(Exception, match="has not arrived"):
        incoming = await pair.prepare(spec)
        await pair.b.driver.finish_migration(spec.vm_id)
    with pytest.raises(Exception, match="is not running"):
        await pair.b.driver.migrate_out("i-00000000000000fff", incoming)
    await pair.b.driver.cancel_migration(spec.vm_id)
    await assert_clean(pair.b, spec)
    assert await pair.a.driver.migration_status(spec.vm_id) is None
    await pair.a.driver.cancel_migration(spec.vm_id)  # nothing to cancel: a no-op
    assert (await pair.a.driver.observe())[spec.vm_id].power is PowerState.RUNNING
