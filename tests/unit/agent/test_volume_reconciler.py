"""VolumeReconciler on the fake driver, with real qcow2 files in a temp host dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.agent.drivers.base import VMSpec
from cumulo.agent.drivers.fake import FakeDriver, FakeHost
from cumulo.agent.storage.volumes import GIB, VolumeStore
from cumulo.agent.volume_reconciler import VolumeReconciler
from cumulo.domain.arch import Arch
from cumulo.protocol import SnapshotAssignment, VolumeAssignment, VolumeObservation

A, B = "i-0000000000000000a", "i-0000000000000000b"
VOL = "vol-0123456789abcdef0"
SNAP = "snap-0123456789abcdef0"


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def rec(host: FakeHost, tmp_path: Path) -> VolumeReconciler:
    return VolumeReconciler(FakeDriver(host, check_paths=False), VolumeStore(tmp_path),
                            detach_timeout_s=0.2, detach_step_s=0.05, retry_s=60)  # fmt: skip


def vol(**kw: object) -> VolumeAssignment:
    base: dict[str, object] = {"id": VOL, "size_gib": 1, "iops": 100, "mbps": 10,
                               "desired": "present", "generation": 1}  # fmt: skip
    base.update(kw)
    return VolumeAssignment.model_validate(base)


async def boot(rec: VolumeReconciler, vm_id: str) -> None:
    spec = VMSpec(vm_id, vm_id, Arch.X86_64, 1, 128, Path("/nonexistent"),
                  volumes=rec.attachments_for(vm_id))  # fmt: skip
    await rec.driver.start(spec)


async def one(rec: VolumeReconciler, v: VolumeAssignment, running: set[str],
              snaps: list[SnapshotAssignment] | None = None) -> VolumeObservation:  # fmt: skip
    vols, _ = await rec.run_pass([v], snaps or [], running)
    rec.acknowledge(vols, [])
    assert len(vols) <= 1
    return vols[0] if vols else rec._last_vols[v.id]


async def test_create_then_report_only_changes(rec: VolumeReconciler) -> None:
    obs = await one(rec, vol(size_gib=2), set())
    assert (obs.state, obs.size_gib, obs.attached_to) == ("available", 2, None)
    assert rec.store.has_volume(VOL)
    assert await rec.run_pass([vol(size_gib=2)], [], set()) == ([], [])
    rec.forget_reports()
    vols, _ = await rec.run_pass([vol(size_gib=2)], [], set())
    assert [o.state for o in vols] == ["available"]


async def test_hot_plug_to_a_running_vm_and_cold_attach_to_a_stopped_one(
    rec: VolumeReconciler,
) -> None:
    await boot(rec, A)
    obs = await one(rec, vol(attach_to=A), {A})
    assert (obs.state, obs.attached_to) == ("in-use", A)
    assert await rec.driver.attached_volumes(A) == {VOL}
    assert rec.attachments_for(A)[0].iops == 100
    # Move it to B, which is stopped: detached from A now, given to B at its next boot.
    obs = await one(rec, vol(attach_to=B, generation=2), {A})
    assert (obs.state, obs.attached_to) == ("in-use", B)
    assert await rec.driver.attached_volumes(A) == set()
    assert [a.volume_id for a in rec.attachments_for(B)] == [VOL] and not rec.attachments_for(A)
    await boot(rec, B)
    assert await rec.driver.attached_volumes(B) == {VOL}
    assert await rec.run_pass([vol(attach_to=B, generation=2)], [], {A, B}) == ([], [])


async def test_not_cold_attached_while_another_vm_still_holds_it(
    rec: VolumeReconciler, host: FakeHost
) -> None:
    await boot(rec, A)
    await one(rec, vol(attach_to=A), {A})
    host.stuck_volumes.add(VOL)
    obs = await one(rec, vol(attach_to=B, generation=2), {A})
    assert (obs.state, obs.attached_to) == ("detaching", A)
    assert rec.attachments_for(B) == ()  # QEMU would refuse the image lock anyway


async def test_detach_timeout_keeps_it_in_use_with_a_reason(
    rec: VolumeReconciler, host: FakeHost
) -> None:
    await boot(rec, A)
    await one(rec, vol(attach_to=A), {A})
    host.stuck_volumes.add(VOL)
    obs = await one(rec, vol(generation=2), {A})
    assert (obs.state, obs.attached_to, obs.reason) == ("detaching", A, "")
    for _ in range(10):
        obs = await one(rec, vol(generation=2), {A})
        if obs.state != "detaching":
            break
    assert (obs.state, obs.attached_to) == ("in-use", A)
    assert "did not release the disk" in obs.reason and "timed out" in obs.reason
    # The guest lets go later: the next try completes the detach.
    host.stuck_volumes.clear()
    rec._detaching[VOL].next_try = 0
    obs = await one(rec, vol(generation=2), {A})
    assert (obs.state, obs.attached_to, obs.reason) == ("available", None, "")


async def test_grow_detached_and_attached(rec: VolumeReconciler) -> None:
    await one(rec, vol(), set())
    obs = await one(rec, vol(size_gib=2, generation=2), set())
    assert obs.size_gib == 2 and rec.store.volume_size(VOL) == 2 * GIB
    await boot(rec, A)
    await one(rec, vol(size_gib=2, attach_to=A, generation=3), {A})
    obs = await one(rec, vol(size_gib=3, attach_to=A, generation=4), {A})
    assert (obs.state, obs.size_gib) == ("in-use", 3)  # through the driver (block_resize)


async def test_delete_detaches_first_and_keeps_nothing(rec: VolumeReconciler) -> None:
    await boot(rec, A)
    await one(rec, vol(attach_to=A), {A})
    vols, _ = await rec.run_pass([vol(desired="deleted", generation=2)], [], {A})
    assert [(o.state, o.attached_to) for o in vols] == [("deleted", None)]
    rec.acknowledge(vols, [])
    assert not rec.store.has_volume(VOL) and await rec.driver.attached_volumes(A) == set()
    assert rec._last_vols == {}


async def test_snapshots_detached_attached_and_a_volume_from_one(rec: VolumeReconciler) -> None:
    await one(rec, vol(size_gib=2), set())
    snap = SnapshotAssignment(id=SNAP, volume_id=VOL, desired="present")
    _, snaps = await rec.run_pass([vol(size_gib=2)], [snap], set())
    assert [(s.state, s.size_gib) for s in snaps] == [("available", 2)]
    await boot(rec, A)
    await one(rec, vol(size_gib=2, attach_to=A), {A})
    live = SnapshotAssignment(id="snap-00000000000000002", volume_id=VOL, desired="present")
    _, snaps = await rec.run_pass([vol(size_gib=2, attach_to=A)], [live], {A})
    assert [s.state for s in snaps] == ["available"]  # taken through the driver
    copy = vol(id="vol-00000000000000003", size_gib=5, source_snapshot=SNAP)
    waiting = vol(id="vol-00000000000000004", source_snapshot="snap-00000000000000009")
    vols, _ = await rec.run_pass([copy, waiting], [], set())
    by_id = {o.id: o for o in vols}
    assert (by_id[copy.id].state, by_id[copy.id].size_gib) == ("available", 5)
    assert by_id[waiting.id].state == "creating"
    assert "waiting for snapshot" in by_id[waiting.id].reason
    gone = snap.model_copy(update={"desired": "deleted"})
    _, snaps = await rec.run_pass([], [gone], set())
    assert [s.state for s in snaps] == ["deleted"] and not rec.store.has_snapshot(SNAP)
    orphan = SnapshotAssignment(id="snap-00000000000000005", volume_id=None, desired="present")
    _, snaps = await rec.run_pass([], [orphan], set())
    assert snaps[0].state == "error" and "is not on this host" in snaps[0].reason


async def test_failures_are_errors_with_a_reason_and_retried_later(rec: VolumeReconciler) -> None:
    await boot(rec, A)
    await one(rec, vol(), set())
    rec.store.volume_path(VOL).unlink()
    rec.store.volume_path(VOL).write_bytes(b"garbage")  # not a qcow2 any more
    obs = await one(rec, vol(attach_to=A, generation=2), {A})
    assert obs.state == "error" and "not a qcow2" in obs.reason
    rec.store.delete_volume(VOL)
    obs = await one(rec, vol(attach_to=A, generation=2), {A})
    assert obs.state == "error"  # same generation: not retried before retry_s
    obs = await one(rec, vol(attach_to=A, generation=3), {A})
    assert (obs.state, obs.attached_to) == ("in-use", A)


async def test_a_new_reconciler_sees_attachments_made_before(
    rec: VolumeReconciler, host: FakeHost, tmp_path: Path
) -> None:
    await boot(rec, A)
    await one(rec, vol(attach_to=A), {A})
    again = VolumeReconciler(FakeDriver(host, check_paths=False), VolumeStore(tmp_path))
    vols, _ = await again.run_pass([vol(attach_to=A)], [], {A})
    assert [(o.state, o.attached_to) for o in vols] == [("in-use", A)]
    assert await again.driver.attached_volumes(A) == {VOL}


async def test_agent_loop_reports_volumes_and_cold_attaches(tmp_path: Path) -> None:
    """The wiring: volumes converge before instances, and reach the API in the same report."""
    import asyncio

    from cumulo.agent.main import agent_loop
    from cumulo.agent.reconciler import Reconciler
    from cumulo.protocol import Assignments, HostRegistration, Report

    driver = FakeDriver(check_paths=False)
    vrec = VolumeReconciler(driver, VolumeStore(tmp_path))
    rec = Reconciler(driver, tmp_path / "instances", volumes=vrec.attachments_for)
    stop = asyncio.Event()
    sent: list[Report] = []

    class Client:
        async def register(self, reg: HostRegistration) -> str:
            return "h"

        def beat_address(self) -> None:
            return None  # an API in process: no UDP beats

        async def assignments(self, host: str, since: int, wait: float,
                              dns: list[str] | None = None, have: str | None = None,
                              report: Report | None = None) -> Assignments:
            if report is not None:  # the first pass's report rides on the next poll
                sent.append(report)
                stop.set()
            return Assignments(version=1, instances=[], volumes=[vol(attach_to=A)])

    reg = HostRegistration(name="h", zone="z", architectures=["x86_64"], vcpus=1, ram_mib=1,
                           driver="fake", accel="fake")  # fmt: skip
    await agent_loop(Client(), rec, reg, stop, vrec)  # type: ignore[arg-type]
    assert [(v.state, v.attached_to) for v in sent[0].volumes] == [("in-use", A)]
    assert [a.volume_id for a in rec.volumes(A)] == [VOL]  # type: ignore[misc]
