"""A host's part in live migrations: carry out the step the API gives (prepare, migrate,
finish, abort; discard: an instance evacuated while this host was down) through the driver's
migration calls, and report what the driver says. A cold move (a stopped instance) takes the
same steps through the driver's cold calls; its destination's finish first compares the digest
of what arrived with the source's, and refuses the copy (`failed`) when they differ.

Every step is idempotent, and the driver records each VM's role in its own files, so an
destination whose agent restarts mid-migration carries on. The one thing kept here is which
migrations this host has started (`started_dir`, one empty file per migration id), so that a
source never starts a second copy of a migration whose first one ended, nor a destination
prepares again a VM that went away (it reports that instead). A source whose agent restarted
during the copy rolls it back (the copy is followed by the agent that started it).
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from cumulo.agent.drivers.base import (
    DriverError,
    IncomingMigration,
    MigratingDriver,
    MigrationState,
    MigrationStatus,
    VMSpec,
)
from cumulo.agent.image_cache import ImageFetching
from cumulo.agent.storage.disks import StorageError
from cumulo.domain.ids import is_id
from cumulo.domain.migration import DONE, Step
from cumulo.protocol import Assignment, MigrationAssignment, MigrationObservation

log = structlog.get_logger("cumulo.agent")

_COPYING = (MigrationState.COPYING_DISKS, MigrationState.COPYING_MEMORY,
            MigrationState.SWITCHING_OVER)


@dataclass
class MigrationReconciler:
    driver: MigratingDriver
    started_dir: Path
    # The spec of an arriving VM: like a start's, but its boot disk is not made (the driver
    # makes it empty, and the source fills it).
    incoming_spec: Callable[[Assignment], Awaitable[VMSpec]]
    remove_storage: Callable[[str], None]  # an instance's files on this host
    underlay_ip: str | None = None
    # VMs that arrived: their NICs are announced (announce-self) once this host runs them
    # as assigned (their taps on the bridges), so that the fabric learns where they are.
    to_announce: set[str] = field(default_factory=set)
    _last: dict[str, MigrationObservation] = field(default_factory=dict)
    _following: set[str] = field(default_factory=set)  # sources started by this agent

    def moving(self, migrations: list[MigrationAssignment]) -> set[str]:
        """VMs whose power the instance reconciler must leave alone: a source's VM is paused
        by the switch-over, and must not be resumed (nor reported paused) meanwhile."""
        return {m.instance_id for m in migrations if m.role == "source"}

    async def run_pass(self, migrations: list[MigrationAssignment]
                       ) -> list[MigrationObservation]:
        out = []
        for m in migrations:
            if not (is_id(m.id) and is_id(m.instance_id)):
                continue
            try:
                obs = await self._step(m)
            except ImageFetching as e:
                obs = self._obs(m, "incoming", f"waiting: {e}")
            except (DriverError, StorageError, OSError) as e:
                log.error("migration_step_failed", migration=m.id, step=m.step, error=str(e))
                obs = self._failed(m, str(e))
            except Exception as e:  # a bug: it fails this migration, never the whole pass
                # (it killed the agent, and every agent restarted after it at its first pass:
                # the host's volumes and instances waited for the migration's deadline)
                log.exception("migration_step_crashed", migration=m.id, step=m.step)
                obs = self._failed(m, f"internal error: {e!r}")
            if obs.state == "error":
                obs = obs.model_copy(update={"state": "incoming" if m.role == "destination"
                                             else "switching-over"})
            if self._last.get(m.id) != obs:
                out.append(obs)
        return out

    def acknowledge(self, sent: list[MigrationObservation]) -> None:
        for obs in sent:
            self._last[obs.id] = obs

    def forget_reports(self) -> None:
        self._last.clear()

    def _failed(self, m: MigrationAssignment, reason: str) -> MigrationObservation:
        """A step that raised: its migration fails before the switch-over, else it is said
        again at the next pass (run_pass reports it as still under way)."""
        return self._obs(m, "failed" if m.step in (Step.PREPARE, Step.MIGRATE) else "error",
                         reason)

    def _obs(self, m: MigrationAssignment, state: str, reason: str = "",
             status: MigrationStatus | None = None) -> MigrationObservation:
        if status is None:
            return MigrationObservation(id=m.id, step=m.step, state=state, reason=reason)
        p = status.progress
        return MigrationObservation(
            id=m.id, step=m.step, state=state, reason=reason or status.reason,
            progress={"disk_bytes_copied": p.disk_bytes_copied,
                      "disk_bytes_total": p.disk_bytes_total,
                      "ram_bytes_copied": p.ram_bytes_copied,
                      "ram_bytes_total": p.ram_bytes_total,
                      "dirty_pages_rate": p.dirty_pages_rate,
                      "expected_downtime_ms": p.expected_downtime_ms, "passes": p.passes},
            downtime_ms=status.downtime_ms, total_s=status.total_s, checksum=status.checksum)

    async def _prepare(self, m: MigrationAssignment, spec: VMSpec, address: str
                       ) -> IncomingMigration:
        if m.cold:
            return await self.driver.prepare_cold_incoming(spec, address, m.disk_bytes)
        return await self.driver.prepare_incoming(spec, address, m.disk_bytes)

    def _marker(self, m: MigrationAssignment) -> Path:
        return self.started_dir / m.id

    async def _step(self, m: MigrationAssignment) -> MigrationObservation:
        d, vm = self.driver, m.instance_id
        match Step(m.step):
            case Step.PREPARE:
                status = await d.migration_status(vm)
                if status is None:
                    if self._marker(m).exists():
                        return self._obs(m, "failed", "the arriving VM is gone from this host")
                    if m.instance is None or not self.underlay_ip:
                        return self._obs(m, "failed", "this host has no underlay address")
                    spec = await self.incoming_spec(m.instance)
                    self.started_dir.mkdir(parents=True, exist_ok=True)
                    self._marker(m).touch()
                    incoming = await self._prepare(m, spec, self.underlay_ip)
                    return _with_incoming(self._obs(m, "incoming"), incoming)
                obs = self._obs(m, status.state.value, status.reason)
                if status.state is MigrationState.INCOMING and m.incoming is None \
                        and m.instance is not None and self.underlay_ip:
                    # Said again until the API has it (idempotent: the same answer).
                    spec = await self.incoming_spec(m.instance)
                    obs = _with_incoming(obs, await self._prepare(m, spec, self.underlay_ip))
                return obs
            case Step.MIGRATE:
                if not self._marker(m).exists():
                    if m.incoming is None:
                        return self._obs(m, "failed", "no destination given")
                    incoming = IncomingMigration(**m.incoming)  # type: ignore[arg-type]
                    if m.cold and m.instance is None:
                        return self._obs(m, "failed", "no instance given to copy")
                    cold = await self.incoming_spec(m.instance) \
                        if m.cold and m.instance is not None else None
                    self.started_dir.mkdir(parents=True, exist_ok=True)
                    self._marker(m).touch()
                    self._following.add(m.id)
                    if cold is not None:
                        await d.copy_cold_out(cold, incoming)
                    else:
                        await d.migrate_out(vm, incoming)
                status = await d.migration_status(vm)
                if status is None:
                    return self._obs(m, "failed", "the source VM has no migration")
                if m.id not in self._following and status.state in _COPYING:
                    # Started by an agent before this one: nobody follows QEMU's events to
                    # the switch-over any more (the guest would wait paused there). Roll
                    # back: the guest runs on here, and the operator may start it again.
                    await d.cancel_migration(vm)
                    return self._obs(m, "failed", "the source host's agent restarted during "
                                     "the copy: cancelled, the instance runs on where it was")
                return self._obs(m, status.state.value, status=status)
            case Step.FINISH:
                if m.cold and m.role == "destination":
                    arrived = await d.cold_copy_checksum(vm)
                    if arrived != m.checksum:
                        return self._obs(m, "failed", f"the copied disk differs from the "
                                         f"source's: sent {m.checksum or 'no digest'}, "
                                         f"arrived {arrived}")
                await d.finish_migration(vm)
                if m.role == "source":
                    self.remove_storage(vm)  # the VM runs elsewhere now
                elif not m.cold:
                    self.to_announce.add(vm)
                self._marker(m).unlink(missing_ok=True)
                return self._obs(m, DONE)
            case Step.DISCARD:
                # Evacuated while this host was down: it runs elsewhere, from a new disk.
                # Whatever runs here is a stale copy with the same addresses: destroyed.
                await d.destroy(vm)
                self.remove_storage(vm)
                self._marker(m).unlink(missing_ok=True)
                return self._obs(m, DONE)
            case Step.ABORT:
                status = await d.migration_status(vm)
                try:
                    await d.cancel_migration(vm)
                except DriverError:
                    if status is not None and status.state is MigrationState.COMPLETED:
                        return self._obs(m, "completed", status=status)  # too late: forward
                    raise
                if m.role == "destination":
                    self.remove_storage(vm)
                self._marker(m).unlink(missing_ok=True)
                return self._obs(m, DONE)
        return self._obs(m, "error", f"unknown step {m.step!r}")  # pragma: no cover

    async def announce(self, running_assigned: set[str]) -> None:
        """announce-self for the arrived VMs this host now runs as assigned."""
        for vm in sorted(self.to_announce & running_assigned):
            try:
                await self.driver.announce_self(vm)
            except DriverError as e:
                log.warning("announce_failed", vm_id=vm, error=str(e))
            self.to_announce.discard(vm)


def _with_incoming(obs: MigrationObservation, inc: IncomingMigration) -> MigrationObservation:
    return obs.model_copy(update={"incoming": {
        "vm_id": inc.vm_id, "host": inc.host, "nbd_port": inc.nbd_port, "export": inc.export,
        "migration_port": inc.migration_port}})


def remove_dir(root: Path, vm_id: str) -> None:
    """An instance's directory under `root` (its id checked: it becomes a path)."""
    if is_id(vm_id):
        shutil.rmtree(root / vm_id, ignore_errors=True)
