"""One reconcile pass: compare assignments with what the driver observes, act, report.

Every step is idempotent, so a pass interrupted by a crash is simply done again by the next.
VMs the API does not know about are left alone and logged (never destroyed on a guess: an
empty answer from a broken API must not wipe a host).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from cumulo.agent.decide import DELETED, Decision, Step, decide
from cumulo.agent.drivers.base import (
    Driver,
    DriverError,
    Observed,
    PowerState,
    VMSpec,
    VolumeAttachment,
)
from cumulo.agent.image_cache import ImageFetching
from cumulo.agent.storage.disks import StorageError, ensure_overlay
from cumulo.domain.arch import Arch
from cumulo.domain.disk_errors import may_resume, remote
from cumulo.domain.ids import is_id
from cumulo.domain.instance import InstanceState
from cumulo.protocol import Assignment, NetworkRef, Observation, PortAssignment

if TYPE_CHECKING:
    from cumulo.agent.image_cache import ImageCache
    from cumulo.agent.image_export import Exporter
    from cumulo.agent.net.host_network import HostNetwork

log = structlog.get_logger("cumulo.agent")

_LIVE = (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN)


@dataclass
class Reconciler:
    driver: Driver
    instances_dir: Path
    stop_timeout_s: float = 30.0
    network: HostNetwork | None = None  # None: no data plane (the fake driver's hosts)
    # vm_id -> the volumes to cold-attach at start (VolumeReconciler.attachments_for).
    # Volume files live outside instances_dir: destroying an instance never deletes them.
    volumes: Callable[[str], tuple[VolumeAttachment, ...]] | None = None
    # Image files, fetched from the API into the host's cache (None: a host that is given
    # no instance, as in tests of volumes alone).
    images: ImageCache | None = None
    exporter: Exporter | None = None  # `image create-from-instance` jobs
    # A VM paused on a full disk is resumed once that disk's filesystem has this much free.
    resume_free_bytes: int = 64 * 1024 * 1024
    free_bytes: Callable[[str], int | None] = field(default=lambda p: _free_bytes(p))
    # A VM paused on a network volume whose storage host was away is resumed this often, to
    # try the write again (it pauses again at once while the export is still away).
    remote_retry_s: float = 5.0
    _remote_tries: dict[str, float] = field(default_factory=dict)  # vm_id -> next try
    # vm_id -> (generation, monotonic deadline) of an ACPI shutdown we asked for
    _shutdowns: dict[str, tuple[int, float]] = field(default_factory=dict)
    _last_report: dict[str, Observation] = field(default_factory=dict)
    _orphans_logged: set[str] = field(default_factory=set)

    async def run_pass(self, assignments: list[Assignment],
                       networks: list[NetworkRef] | None = None,
                       moving: Collection[str] = (),
                       arriving: Collection[Assignment] = (),
                       ports: Sequence[PortAssignment] = ()) -> list[Observation]:
        """Converge every assigned VM; return the observations that changed since last time.

        `moving`: VMs leaving this host (live migration): their power is the migration's, not
        decided here, and nothing is reported of them. `arriving`: VMs coming to this host,
        whose NICs are plumbed (not started) so that they run on a ready network."""
        observed = await self.driver.observe()
        wanted = {a.id for a in assignments}
        for vm_id in observed.keys() - wanted - self._orphans_logged:
            log.warning("vm_not_in_api", vm_id=vm_id, hint="left running; not destroyed")
            self._orphans_logged.add(vm_id)
        live = {i for i, o in observed.items() if o.power in _LIVE}
        if self.exporter is not None:  # before the VMs: an exported one must not start
            for a in assignments:
                if a.export_id:
                    self.exporter.ensure(a.export_id, a.id, running=a.id in live)
            self.exporter.forget({a.export_id for a in assignments if a.export_id})
        # The namespace and bridges must exist before QEMU starts inside them.
        plumbed = [*assignments, *arriving]
        await self._converge_network(plumbed, networks or [], live, ports)
        results = await asyncio.gather(
            *(self._converge(a, observed.get(a.id)) for a in assignments if a.id not in moving)
        )
        started = {o.id for o in results if o.state == InstanceState.RUNNING.value}
        started |= live & ({*moving} | {a.id for a in arriving})
        if started - live or live - started:
            # New taps to attach (and shape, and firewall); gone ones to forget.
            await self._converge_network(plumbed, networks or [], started, ports)
        if self.images is not None:
            await self.images.collect(assignments)
        changed = []
        for obs in results:
            if self._last_report.get(obs.id) != obs:
                changed.append(obs)
        return changed

    async def _converge_network(self, assignments: list[Assignment],
                                networks: list[NetworkRef], running: set[str],
                                ports: Sequence[PortAssignment]) -> None:
        if self.network is None:
            return
        try:
            await self.network.converge(networks, assignments, running, ports)
        except Exception as e:  # a data-plane failure must not stop the VM reconcile loop
            log.error("network_converge_failed", error=str(e))

    def forget_reports(self) -> None:
        """Make the next pass report everything again (periodic resync with the API)."""
        self._last_report.clear()

    def acknowledge(self, sent: list[Observation]) -> None:
        for obs in sent:
            if obs.state == DELETED:
                self._last_report.pop(obs.id, None)
            else:
                self._last_report[obs.id] = obs

    async def _converge(self, a: Assignment, obs: Observed | None) -> Observation:
        pending = self._shutdowns.get(a.id)
        requested = pending is not None and pending[0] == a.generation
        overdue = requested and pending is not None and time.monotonic() > pending[1]
        d = decide(
            a,
            obs,
            shutdown_requested=requested,
            shutdown_overdue=overdue,
            stop_timeout_s=self.stop_timeout_s,
            resumable=obs is not None and obs.power is PowerState.PAUSED
            and may_resume(obs.io_errors, self.free_bytes, self.resume_free_bytes)
            and self._try_remote(a.id, obs),
            # Asked for any generation: a start since then bumped it, and the guest obeying
            # the earlier request must not be taken for a guest that chose to power off
            # (that would turn the user's start into a stop).
            # The driver's word survives an agent restart (this agent's memory does not).
            powered_off_on_request=pending is not None
            or (obs is not None and obs.power_off_requested),
        )
        if d.step is Step.START and self.exporter is not None and self.exporter.busy(a.id):
            return Observation(id=a.id, state=InstanceState.STOPPED.value,
                               reason="its disk is being exported to an image",
                               generation=a.generation)
        try:
            reboot_done = await self._apply(a, d)
        except ImageFetching as e:  # started at a later pass, once the image is here
            return Observation(id=a.id, state=InstanceState.STARTING.value, reason=str(e),
                               generation=a.generation)
        except (DriverError, StorageError, OSError) as e:
            log.error("step_failed", vm_id=a.id, step=d.step.value, error=str(e))
            return Observation(
                id=a.id,
                state=InstanceState.ERROR.value,
                reason=f"{d.step.value} failed: {e}",
                generation=a.generation,
            )
        return Observation(
            id=a.id,
            state=d.report,
            reason=d.reason,
            generation=a.generation,
            reboot_done_seq=reboot_done,
            guest_initiated=d.guest_initiated,
        )

    def _try_remote(self, vm_id: str, obs: Observed) -> bool:
        """Whether the VM may be resumed now as far as network volumes go: at once when none
        of its errors is one, else once per `remote_retry_s`."""
        if not remote(obs.io_errors):
            self._remote_tries.pop(vm_id, None)
            return True
        now = time.monotonic()
        if now < self._remote_tries.get(vm_id, 0.0):
            return False
        self._remote_tries[vm_id] = now + self.remote_retry_s
        return True

    async def _apply(self, a: Assignment, d: Decision) -> int | None:
        """Carry out the step; returns the reboot sequence now done, if it changed."""
        if d.step is not Step.REQUEST_SHUTDOWN and d.step is not Step.NONE:
            self._shutdowns.pop(a.id, None)
        match d.step:
            case Step.START:
                await self.driver.start(await self._spec(a))
            case Step.REQUEST_SHUTDOWN:
                await self.driver.request_shutdown(a.id)
                self._shutdowns[a.id] = (a.generation, time.monotonic() + self.stop_timeout_s)
            case Step.FORCE_STOP:
                await self.driver.force_stop(a.id)
            case Step.REBOOT:
                await self.driver.reboot(a.id)
                return a.reboot_seq
            case Step.RESUME:
                log.info("vm_resumed", vm_id=a.id, hint="its full disk has room again, or a "
                         "network volume's storage host may be back")
                await self.driver.resume(a.id)
            case Step.DESTROY:
                self._remote_tries.pop(a.id, None)
                await self.driver.destroy(a.id)
                self._remove_storage(a.id)
            case Step.NONE:
                pass
        return None

    def _instance_dir(self, vm_id: str) -> Path:
        if not is_id(vm_id):  # the id becomes a path: never trust it blindly
            raise StorageError(f"refusing malformed instance id {vm_id!r}")
        return self.instances_dir / vm_id

    def _remove_storage(self, vm_id: str) -> None:
        shutil.rmtree(self._instance_dir(vm_id), ignore_errors=True)

    async def incoming_spec(self, a: Assignment) -> VMSpec:
        """The spec of a VM arriving by live migration: its boot disk is not made here (the
        driver makes it empty; the source fills it)."""
        return await self._spec(a, make_disk=False)

    def remove_storage(self, vm_id: str) -> None:
        self._remove_storage(vm_id)

    async def _spec(self, a: Assignment, make_disk: bool = True) -> VMSpec:
        from cumulo.agent.storage.seed import build_seed_iso

        if self.images is None:
            raise StorageError("this host has no image cache")
        files = await self.images.resolve(a.image)
        d = self._instance_dir(a.id)
        d.mkdir(parents=True, exist_ok=True)
        disk = d / "disk.qcow2"
        if not disk.exists():
            # Before the overlay: its backing file is kept (an arriving VM's disk has none,
            # but its kernel is read again at each reboot).
            self.images.pin(d, a.image)
        if make_disk:
            await ensure_overlay(disk, files["disk"], a.disk_gib)
        seed = d / "seed.iso"
        user_data = base64.b64decode(a.user_data_b64) if a.user_data_b64 else None
        await asyncio.to_thread(
            build_seed_iso,
            seed,
            instance_id=a.id,
            hostname=a.hostname,
            fqdn=a.fqdn or None,  # "" from an API older than the FQDN in the assignment
            user_data=user_data,
            ssh_public_keys=a.ssh_public_keys,
        )
        return VMSpec(
            vm_id=a.id,
            hostname=a.hostname,
            arch=Arch.parse(a.arch),
            vcpus=a.vcpus,
            ram_mib=a.ram_mib,
            boot_disk=disk,
            kernel=files.get("kernel"),
            initrd=files.get("initrd"),
            kernel_cmdline=a.image.kernel_cmdline,
            seed_iso=seed,
            netns=self.network.netns if self.network else None,
            nics=self.network.nic_specs(a) if self.network else (),
            volumes=self.volumes(a.id) if self.volumes else (),
            boot_write_error=a.boot_write_error,
            cpu_set=tuple(a.cpu_set),
        )


def _free_bytes(path: str) -> int | None:
    """Free bytes of the filesystem holding `path` (None: it cannot be read)."""
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
