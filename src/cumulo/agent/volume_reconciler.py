"""One reconcile pass over the block volumes and snapshots assigned to this host.

The hypervisor is the source of truth for attachments (asked through the driver on every
pass), the files for existence and size. Every step is idempotent, so a pass cut short by a
crash is simply done again by the next. Order of a pass: snapshots to take (before their
source volume can change or go), then each volume (create, detach from the wrong VM, grow,
hot-plug, delete), then snapshots to delete.

States reported (VolumeObservation.state):
- "creating": the file is not there yet (waiting for the snapshot it is made from);
- "available": the file exists and no VM holds it (and none should);
- "in-use": held by the running VM it is assigned to, or assigned to a VM that is not
  running (it is cold-attached at that VM's next start: see `attachments_for`);
- "detaching": the guest has been asked to release the disk and has not yet;
- "error": the last step failed; `reason` says which and why (retried after `retry_s`,
  or at once when the assignment's generation changes).
A volume of another host (`remote` set: attach it over NBD) has no file here: only its
attachment is converged and reported. A volume of this host attached to an instance of
another (`export` set) is exported over NBD by the exporter, and stopped being exported once
no longer asked. A grow of a volume over NBD is done by both hosts: the storage host grows
its export, then the instance's host moves the disk onto a connection that sees the new size
(until the export has grown, it reports "in-use" with the reason and tries again next pass).
An NBD attach that fails (the export not up yet) shows "attaching" with the reason for
`remote_wait_s`, then "error".
A detach the guest does not complete within `detach_timeout_s` is reported as "in-use"
(still attached, which is the truth: the disk is still in the guest), with a reason saying
the guest did not release it; the unplug request is re-sent every `detach_timeout_s`
while the assignment still asks for it, and completes whenever the guest lets go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import structlog

from cumulo.agent.drivers.base import (
    DetachTimeout,
    Driver,
    DriverError,
    LocalFile,
    NbdExport,
    VolumeAttachment,
)
from cumulo.agent.storage.disks import StorageError
from cumulo.agent.storage.nbd_exports import ExportSpec, VolumeExporter
from cumulo.agent.storage.volumes import GIB, VolumeStore
from cumulo.domain.volume import SnapshotState, VolumeState
from cumulo.protocol import SnapshotAssignment, SnapshotObservation, VolumeAssignment
from cumulo.protocol import VolumeObservation as VolObs

log = structlog.get_logger("cumulo.agent")

DELETED = "deleted"
_FAILURES = (DriverError, StorageError, OSError)


@dataclass
class _Detach:
    vm_id: str
    deadline: float  # when the guest has had detach_timeout_s to release the disk
    next_try: float = 0.0
    timed_out: str = ""  # the reason, once the deadline has passed


class _StepFailed(Exception):
    def __init__(self, step: str, exc: BaseException) -> None:
        super().__init__(f"{step} failed: {exc}")


@dataclass
class VolumeReconciler:
    driver: Driver
    store: VolumeStore
    detach_timeout_s: float = 30.0  # how long the guest gets to release a detached disk
    detach_step_s: float = 3.0  # the longest one pass waits for it
    retry_s: float = 10.0  # a failed step is tried again after this (same generation)
    exporter: VolumeExporter | None = None  # NBD exports of this host's volumes (None: none)
    remote_wait_s: float = 30.0
    _remote_failing: dict[str, float] = field(default_factory=dict)  # volume -> since
    _remote_size: dict[str, int] = field(default_factory=dict)  # grown to (bytes), over NBD
    _desired: dict[str, VolumeAssignment] = field(default_factory=dict)
    _holders: dict[str, set[str]] = field(default_factory=dict)  # volume -> running VMs
    _detaching: dict[str, _Detach] = field(default_factory=dict)
    _failed: dict[str, tuple[int, float, VolObs]] = field(default_factory=dict)
    _snap_failed: dict[str, tuple[float, SnapshotObservation]] = field(default_factory=dict)
    _last_vols: dict[str, VolObs] = field(default_factory=dict)
    _last_snaps: dict[str, SnapshotObservation] = field(default_factory=dict)
    _orphans_logged: set[str] = field(default_factory=set)

    # -- what the instance reconciler asks ---------------------------------------------------

    def attachments_for(self, vm_id: str) -> tuple[VolumeAttachment, ...]:
        """The volumes to cold-attach when `vm_id` starts (put them in its VMSpec.volumes).

        Those assigned to it whose file exists and that no other running VM holds, in the
        order of the assignments (the guest names them vdX in that order after the boot disks).
        """
        return tuple(
            self._attachment(v)
            for v in self._desired.values()
            if v.desired != DELETED
            and v.attach_to == vm_id
            and not (self._holders.get(v.id, set()) - {vm_id})
            and (v.remote is not None or self.store.has_volume(v.id))
        )

    def expect(self, volumes: list[VolumeAssignment]) -> None:
        """Take the new assignments before the pass: a VM arriving live is started (by the
        migration reconciler, before this pass) with the volumes it is assigned now."""
        self._desired = {v.id: v for v in volumes}

    @property
    def busy(self) -> bool:
        """Whether a pass has anything to do or to report even with no assignments."""
        return bool(self._desired or self._last_vols or self._last_snaps or self._detaching)

    # -- the pass ---------------------------------------------------------------------------

    async def run_pass(
        self,
        volumes: list[VolumeAssignment],
        snapshots: list[SnapshotAssignment],
        running: set[str],
    ) -> tuple[list[VolObs], list[SnapshotObservation]]:
        """Converge; return the observations that changed since the last acknowledged ones.

        `running`: the VMs whose QEMU process is alive (they can hold disks).
        """
        self._desired = {v.id: v for v in volumes}
        holders = await self._observe_holders(running)
        snaps = [await self._take(s, holders) for s in snapshots if s.desired != DELETED]
        results = await asyncio.gather(
            *(self._converge(v, set(holders.get(v.id, ())), running) for v in volumes)
        )
        self._holders = {o.id: held for o, held in results if held}
        for vol, vms in holders.items():  # held, but not assigned: never touched on a guess
            if vol not in self._desired:
                self._holders[vol] = vms
                if vol not in self._orphans_logged:
                    log.warning("volume_not_in_api", volume_id=vol, vms=sorted(vms))
                    self._orphans_logged.add(vol)
        for s in snapshots:
            if s.desired == DELETED:
                snaps.append(self._delete_snapshot(s))
        for gone in self._detaching.keys() - self._desired.keys():
            del self._detaching[gone]
        await self._stop_unwanted_exports()
        vols = [o for o, _ in results]
        return (
            [o for o in vols if self._last_vols.get(o.id) != o],
            [o for o in snaps if self._last_snaps.get(o.id) != o],
        )

    def acknowledge(self, volumes: list[VolObs], snapshots: list[SnapshotObservation]) -> None:
        for vo in volumes:
            if vo.state == DELETED:
                self._last_vols.pop(vo.id, None)
            else:
                self._last_vols[vo.id] = vo
        for so in snapshots:
            if so.state == DELETED:
                self._last_snaps.pop(so.id, None)
            else:
                self._last_snaps[so.id] = so

    def forget_reports(self) -> None:
        """Make the next pass report everything again (periodic resync with the API)."""
        self._last_vols.clear()
        self._last_snaps.clear()

    # -- volumes ----------------------------------------------------------------------------

    async def _observe_holders(self, running: set[str]) -> dict[str, set[str]]:
        holders: dict[str, set[str]] = {}

        async def one(vm_id: str) -> None:
            try:
                held = await self.driver.attached_volumes(vm_id)
            except DriverError as e:  # its volumes' steps will fail and say why
                log.warning("attached_volumes_failed", vm_id=vm_id, error=str(e))
                return
            for vol in held:
                holders.setdefault(vol, set()).add(vm_id)

        await asyncio.gather(*(one(vm) for vm in sorted(running)))
        return holders

    async def _converge(
        self, v: VolumeAssignment, held: set[str], running: set[str]
    ) -> tuple[VolObs, set[str]]:
        failed = self._failed.get(v.id)
        if failed is not None:
            if failed[0] == v.generation and time.monotonic() < failed[1]:
                return failed[2].model_copy(update={"attached_to": _one(held)}), held
            del self._failed[v.id]
        try:
            try:
                return await self._steps(v, held, running), held
            except _FAILURES as e:
                raise _StepFailed("volume", e) from e
        except _StepFailed as e:
            log.error("volume_step_failed", volume_id=v.id, error=str(e))
            obs = VolObs(id=v.id, state=VolumeState.ERROR, attached_to=_one(held),
                         size_gib=self._size(v.id),
                         reason=str(e), generation=v.generation)  # fmt: skip
            self._failed[v.id] = (v.generation, time.monotonic() + self.retry_s, obs)
            return obs, held

    async def _steps(self, v: VolumeAssignment, held: set[str], running: set[str]) -> VolObs:
        """Carry out what is due; `held` is updated in place as VMs let go or take the disk."""
        target = v.attach_to if v.desired != DELETED else None
        for vm in sorted(held - {target}):
            if await self._detach(v, vm):
                held.discard(vm)
        if v.remote is not None:
            return await self._remote_steps(v, target, held, running)
        if v.export is None or v.desired == DELETED:
            await self._unexport(v.id)
        if v.desired == DELETED:
            if held:
                return self._still_held(v, held)
            self.store.delete_volume(v.id)
            return VolObs(id=v.id, state=DELETED, generation=v.generation)
        if not self.store.has_volume(v.id):
            src = v.source_snapshot
            if src is not None and not self.store.has_snapshot(src):
                return VolObs(id=v.id, state=VolumeState.CREATING,
                              reason=f"waiting for snapshot {src}",
                              generation=v.generation)  # fmt: skip
            await _step("create", self.store.create_volume(v.id, v.size_gib, src))
        if held - {target}:  # a detach is still pending: the other VM has the file open
            return self._still_held(v, held)
        if v.export is not None:
            return await self._export_steps(v)
        if self.store.volume_size(v.id) < v.size_gib * GIB:
            if target is not None and target in held:
                await _step("grow", self.driver.resize_volume(target, self._attachment(v),
                                                              v.size_gib * GIB))
            else:
                await _step("grow", self.store.grow_volume(v.id, v.size_gib))
        if target is not None and target in running and target not in held:
            await _step("attach", self.driver.attach_volume(target, self._attachment(v)))
            held.add(target)
        if target is None:
            return self._obs(v, VolumeState.AVAILABLE, None)
        return self._obs(v, VolumeState.IN_USE, target)

    async def _remote_steps(self, v: VolumeAssignment, target: str | None, held: set[str],
                            running: set[str]) -> VolObs:
        """A volume of another host: only its attachment (over NBD) is this host's to do."""
        if held - {target}:
            return self._still_held(v, held)
        if target is not None and target in running and target not in held:
            try:
                await self.driver.attach_volume(target, self._attachment(v))
            except _FAILURES as e:
                since = self._remote_failing.setdefault(v.id, time.monotonic())
                if time.monotonic() - since >= self.remote_wait_s:
                    del self._remote_failing[v.id]
                    raise _StepFailed("attach over NBD", e) from e
                return self._obs(v, VolumeState.ATTACHING, None,
                                 f"waiting for the storage host's export: {e}")
            held.add(target)
        self._remote_failing.pop(v.id, None)
        if target is None:
            self._remote_size.pop(v.id, None)
            return self._obs(v, VolumeState.AVAILABLE, None)
        if target in held and self._remote_size.get(v.id, 0) < v.size_gib * GIB:
            try:  # the storage host grows its export first; until then this waits
                await self.driver.resize_volume(target, self._attachment(v), v.size_gib * GIB)
            except _FAILURES as e:
                return self._obs(v, VolumeState.IN_USE, target, f"growing: {e}")
            self._remote_size[v.id] = v.size_gib * GIB
        return self._obs(v, VolumeState.IN_USE, target)

    async def _export_steps(self, v: VolumeAssignment) -> VolObs:
        """A volume of this host attached to an instance of another: export it over NBD (the
        instance's host reports the attachment)."""
        if self.exporter is None or v.export is None:
            raise _StepFailed("export", StorageError("this host cannot export volumes"))
        link = v.export
        if self.store.volume_size(v.id) < v.size_gib * GIB:  # online: the export shows it
            await _step("grow", self.exporter.grow(v.id, self.store.volume_path(v.id),
                                                   v.size_gib * GIB))
        await _step("export", self.exporter.ensure(
            v.id, self.store.volume_path(v.id), ExportSpec(link.name, link.key, link.port)))
        return self._obs(v, VolumeState.IN_USE, None, "exported over NBD")

    async def _unexport(self, vol_id: str) -> None:
        if self.exporter is not None and vol_id in self.exporter.exported():
            await _step("unexport", self.exporter.stop(vol_id))

    async def _stop_unwanted_exports(self) -> None:
        if self.exporter is None:
            return
        for vol in sorted(self.exporter.exported() - self._desired.keys()):
            try:
                await self.exporter.stop(vol)
            except _FAILURES as e:
                log.error("unexport_failed", volume_id=vol, error=str(e))

    async def _detach(self, v: VolumeAssignment, vm_id: str) -> bool:
        """Ask `vm_id` to release the disk; True once it has."""
        now = time.monotonic()
        d = self._detaching.get(v.id)
        if d is None or d.vm_id != vm_id:
            d = self._detaching[v.id] = _Detach(vm_id, now + self.detach_timeout_s)
        if now < d.next_try:
            return False
        wait = max(0.0, min(self.detach_step_s, d.deadline - now))
        try:
            await self.driver.detach_volume(vm_id, v.id, wait)
        except DetachTimeout:
            if time.monotonic() >= d.deadline:
                d.timed_out = (
                    f"detach from {vm_id} timed out after {self.detach_timeout_s:g}s: the guest"
                    " did not release the disk (unmount it, then detach again)"
                )
                # Keep the request pending; ask again (a fresh window) later.
                d.next_try = time.monotonic() + self.detach_timeout_s
                d.deadline = d.next_try + self.detach_timeout_s
            return False
        except _FAILURES as e:
            raise _StepFailed("detach", e) from e
        del self._detaching[v.id]
        return True

    def _still_held(self, v: VolumeAssignment, held: set[str]) -> VolObs:
        d = self._detaching.get(v.id)
        if d is not None and d.timed_out:
            return self._obs(v, VolumeState.IN_USE, d.vm_id, d.timed_out)
        return self._obs(v, VolumeState.DETACHING, _one(held))

    def _obs(self, v: VolumeAssignment, state: str, vm: str | None, reason: str = "") -> VolObs:
        return VolObs(id=v.id, state=state, attached_to=vm, size_gib=self._size(v.id),
                      reason=reason, generation=v.generation)  # fmt: skip

    def _size(self, vol_id: str) -> int:
        try:
            return self.store.volume_size(vol_id) // GIB
        except StorageError:
            return 0

    def _attachment(self, v: VolumeAssignment) -> VolumeAttachment:
        r = v.remote
        source = (LocalFile(self.store.volume_path(v.id)) if r is None
                  else NbdExport(r.host, r.port, r.name, r.key))
        return VolumeAttachment(v.id, source, v.iops, v.mbps, v.write_error)

    # -- snapshots --------------------------------------------------------------------------

    async def _take(
        self, s: SnapshotAssignment, holders: dict[str, set[str]]
    ) -> SnapshotObservation:
        if self.store.has_snapshot(s.id):
            self._snap_failed.pop(s.id, None)
            return self._snap_obs(s.id, SnapshotState.AVAILABLE)
        failed = self._snap_failed.get(s.id)
        if failed is not None and time.monotonic() < failed[0]:
            return failed[1]
        vol = s.volume_id
        try:
            if vol is None or not self.store.has_volume(vol):
                if vol is not None and vol in self._desired:
                    return self._snap_obs(s.id, SnapshotState.CREATING,
                                          f"waiting for volume {vol}")
                raise StorageError(f"source volume {vol or '(deleted)'} is not on this host")
            vms = holders.get(vol)
            if self.exporter is not None and vol in self.exporter.exported():
                tmp = self.store.temp_path(self.store.snapshot_path(s.id))
                tmp.unlink(missing_ok=True)
                await self.exporter.snapshot(vol, tmp)  # held open by its export daemon
                self.store.commit_snapshot(s.id)
            elif vms:
                tmp = self.store.temp_path(self.store.snapshot_path(s.id))
                tmp.unlink(missing_ok=True)
                await self.driver.snapshot_volume(min(vms), vol, tmp)
                self.store.commit_snapshot(s.id)
            else:
                await self.store.snapshot_volume(vol, s.id)
        except _FAILURES as e:
            log.error("snapshot_failed", snapshot_id=s.id, error=str(e))
            obs = SnapshotObservation(id=s.id, state=SnapshotState.ERROR,
                                      reason=f"snapshot failed: {e}")
            self._snap_failed[s.id] = (time.monotonic() + self.retry_s, obs)
            return obs
        self._snap_failed.pop(s.id, None)
        return self._snap_obs(s.id, SnapshotState.AVAILABLE)

    def _delete_snapshot(self, s: SnapshotAssignment) -> SnapshotObservation:
        self._snap_failed.pop(s.id, None)
        try:
            self.store.delete_snapshot(s.id)
        except _FAILURES as e:
            return SnapshotObservation(id=s.id, state=SnapshotState.ERROR,
                                       reason=f"delete failed: {e}")
        return SnapshotObservation(id=s.id, state=DELETED)

    def _snap_obs(self, snap_id: str, state: str, reason: str = "") -> SnapshotObservation:
        try:
            available = state == SnapshotState.AVAILABLE
            size = self.store.snapshot_size(snap_id) // GIB if available else 0
        except StorageError:
            size = 0
        return SnapshotObservation(id=snap_id, state=state, size_gib=size, reason=reason)


async def _step(name: str, aw: Awaitable[None]) -> None:
    try:
        await aw
    except _FAILURES as e:
        raise _StepFailed(name, e) from e


def _one(vms: set[str]) -> str | None:
    return min(vms) if vms else None
