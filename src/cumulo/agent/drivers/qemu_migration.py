"""Live migration on QEMU 7.2, followed by QMP events (the QemuDriver's migration calls).

The order is libvirt's (qemuMigrationSrcNBDStorageCopy) with QEMU's pause-before-switchover:
- destination: QEMU started with `-S -incoming defer` on an empty boot disk of the same size;
  an NBD server on its underlay address exports that disk (writable); `migrate-incoming` on
  tcp:ADDRESS:0 (QEMU picks the port, query-migrate tells it).
- source: an NBD client node on the export; `blockdev-mirror` of the boot disk into it
  (sync=full: no image is assumed on the destination); BLOCK_JOB_READY -> `migrate`; the
  MIGRATION event `pre-switchover` (source paused) -> `block-job-cancel` of the ready mirror
  (it drains and ends with a point-in-time copy, the source keeps its own disk) ->
  `migrate-continue` -> MIGRATION `completed`: the source stays stopped (postmigrate).
- finish: the destination drops its export and resumes (`cont`); the source is removed.
Any failure or cancel before the switch-over: migrate_cancel, the mirror abandoned, the NBD
node removed and the source resumed if it is paused; the destination QEMU exits by itself on a
failed incoming stream, and cancel there removes its process and disk.

Each side records its role in `<vm dir>/migration.json`, so a new driver (a restarted agent)
still knows which VM is incoming or outgoing and how a finished migration ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cumulo.agent.drivers.base import (
    DriverError,
    IncomingMigration,
    MigrationProgress,
    MigrationState,
    MigrationStatus,
)
from cumulo.agent.drivers.qmp import Event, QMPSession

CMD_TIMEOUT_S = 5.0
DISK_COPY_TIMEOUT_S = 1800.0  # the mirror reaching READY
MEMORY_COPY_TIMEOUT_S = 1800.0  # pre-copy reaching pre-switchover (then it fails cleanly)
SWITCHOVER_TIMEOUT_S = 120.0
JOB = "mig-root"  # the mirror job of the boot disk
NBD_NODE = "mig-nbd"  # the source's NBD client node (mirror target)
EXPORT = "root"  # the destination's NBD export name (the boot disk)
BOOT_DEVICE = "root"  # the boot disk's drive id (qemu_argv)
NBD_PORTS = (20000, 40000)  # the destination's NBD server: a free port tried in this range
_DONE = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


@dataclass
class Record:
    """The content of migration.json."""

    role: str  # "source" | "destination"
    incoming: dict[str, Any]
    state: str
    reason: str = ""
    downtime_ms: int | None = None
    total_s: float | None = None
    disk_created: str | None = None  # destination: the boot disk it made (removed on cancel)
    disk_bytes: int = 0  # source: the boot disk's size, known once the mirror is ready
    started: float = field(default_factory=time.time)
    # A cold move (qemu_cold_move): the pid of its helper (the destination's
    # qemu-storage-daemon, the source's qemu-img convert) and the digest of the disk.
    cold: bool = False
    helper_pid: int | None = None
    checksum: str = ""
    source_disk: str = ""  # a cold move's source: its boot disk (removed by finish)
    finish_failing_since: float | None = None  # destination: its first failed resume (time)

    @classmethod
    def load(cls, path: Path) -> Record | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    def status(self, vm_id: str, progress: MigrationProgress) -> MigrationStatus:
        return MigrationStatus(vm_id, self.role, MigrationState(self.state), progress,
                               self.downtime_ms, self.total_s, self.reason, self.checksum)


# -- destination ------------------------------------------------------------------------------


async def serve_incoming(qmp: QMPSession, vm_id: str, address: str) -> IncomingMigration:
    """On a QEMU started with -incoming defer: export the boot disk, listen for the memory."""
    await qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "events", "state": True}]}, timeout=CMD_TIMEOUT_S)  # fmt: skip
    nbd_port = await _start_nbd_server(qmp, address)
    await qmp.execute("block-export-add", {
        "type": "nbd", "id": EXPORT, "node-name": await _boot_node(qmp), "name": EXPORT,
        "writable": True,
    }, timeout=CMD_TIMEOUT_S)  # fmt: skip
    host = f"[{address}]" if ":" in address else address
    await qmp.execute("migrate-incoming", {"uri": f"tcp:{host}:0"}, timeout=CMD_TIMEOUT_S)
    info = await qmp.execute("query-migrate", timeout=CMD_TIMEOUT_S)
    ports = [int(a["port"]) for a in info.get("socket-address", []) if "port" in a]
    if not ports:
        raise DriverError(f"incoming migration of {vm_id}: QEMU did not say its port ({info})")
    return IncomingMigration(vm_id, address, nbd_port, EXPORT, ports[0])


async def _boot_node(qmp: QMPSession) -> str:
    """The node name QEMU gave the boot disk's top node (-drive names only the device)."""
    for block in await qmp.execute("query-block", timeout=CMD_TIMEOUT_S):
        if block.get("device") == BOOT_DEVICE and "inserted" in block:
            return str(block["inserted"]["node-name"])
    raise DriverError("the boot disk is not in QEMU's block devices")


async def _start_nbd_server(qmp: QMPSession, address: str) -> int:
    last = ""
    for port in random.sample(range(*NBD_PORTS), 8):
        addr = {"type": "inet", "data": {"host": address, "port": str(port)}}
        try:
            await qmp.execute("nbd-server-start", {"addr": addr}, timeout=CMD_TIMEOUT_S)
            return port
        except DriverError as exc:
            last = str(exc)
            if "in use" not in last:
                raise
    raise DriverError(f"no free NBD port on {address}: {last}")


async def incoming_state(qmp: QMPSession) -> str:
    """QEMU's status of the incoming migration ("active", "completed", "failed", ...)."""
    info = await qmp.execute("query-migrate", timeout=CMD_TIMEOUT_S)
    return str(info.get("status", "none")) if isinstance(info, dict) else "none"


# The runstates a guest arrives in when it had powered off (`shutdown`), panicked or failed
# on the source during the copy: QEMU carries the source's runstate over, and refuses `cont`
# in them ("Resetting the Virtual Machine is required"). Such a guest is not resumed: it
# arrives as it was, and the destination's agent sees it as it would on any host (a guest
# that powered off: stopped; a panic: error, with why).
ARRIVED_OFF = frozenset({"shutdown", "guest-panicked", "internal-error"})


async def resume_incoming(qmp: QMPSession) -> None:
    """The memory has arrived: stop serving the disk, let the guest run here (unless it
    arrived powered off or broken: ARRIVED_OFF)."""
    exports = await qmp.execute("query-block-exports", timeout=CMD_TIMEOUT_S)
    if any(e.get("id") == EXPORT for e in exports):
        await qmp.execute("block-export-del", {"id": EXPORT}, timeout=CMD_TIMEOUT_S)
    with contextlib.suppress(DriverError):  # not running (already stopped): fine
        await qmp.execute("nbd-server-stop", timeout=CMD_TIMEOUT_S)
    status = await qmp.execute("query-status", timeout=CMD_TIMEOUT_S)
    state = str(status.get("status", "")) if isinstance(status, dict) else ""
    if state != "running" and state not in ARRIVED_OFF:
        await qmp.execute("cont", timeout=CMD_TIMEOUT_S)


# -- source -----------------------------------------------------------------------------------

# The source's migration capabilities. auto-converge: while the guest dirties memory faster
# than the link carries it, QEMU throttles its vCPUs (20% at first, 10% more each pass that
# does not converge, up to 99%) until a pass fits the downtime limit, so a busy guest
# converges, slowed for a while, instead of copying forever; the API's [migration]
# max_seconds fails it if even that is not enough. Post-copy (postcopy-ram) is not used: after
# its switch the guest's memory is split between the hosts, and a network cut or a lost host
# then loses the guest, which "the source runs on intact on any failure" forbids.
SOURCE_CAPABILITIES = ("events", "pause-before-switchover", "auto-converge")
# The source's migration parameters. downtime-limit (ms): QEMU pauses the guest for the last
# pass only once what is left to send fits this at the bandwidth it measured; its default,
# 300 ms, let an idle guest stop with a few MB still dirty (a downtime p50 of 160-174 ms
# under TCG). Lower, QEMU makes another pass or two first (cheap for an idle guest; a busy
# one is throttled by auto-converge until it fits). Measured: docs/benchmarks.md.
SOURCE_PARAMETERS: dict[str, int] = {"downtime-limit": 50}


async def set_source_capabilities(q: QMPSession) -> None:
    await q.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": name, "state": True} for name in SOURCE_CAPABILITIES
    ]}, timeout=CMD_TIMEOUT_S)  # fmt: skip
    await q.execute("migrate-set-parameters", SOURCE_PARAMETERS, timeout=CMD_TIMEOUT_S)


class Outgoing:
    """The source side of one migration: a task that follows it by events."""

    def __init__(self, qmp: QMPSession, record_path: Path, record: Record, vm_id: str) -> None:
        self.qmp = qmp
        self.path = record_path
        self.record = record
        self.vm_id = vm_id
        self.task: asyncio.Task[None] | None = None

    def set_state(self, state: MigrationState, reason: str = "") -> None:
        self.record.state, self.record.reason = str(state), reason
        self.record.save(self.path)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"migrate-{self.vm_id}")

    async def _run(self) -> None:
        try:
            await self._copy()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure ends it, with its reason; the source runs on
            reason = str(exc) if isinstance(exc, DriverError) else f"internal error: {exc!r}"
            with contextlib.suppress(DriverError):
                await self.rollback()
            self.set_state(MigrationState.FAILED, reason)

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if MigrationState(self.record.state) is MigrationState.COMPLETED:
            raise DriverError(f"cannot cancel the migration of {self.vm_id}: it has completed")
        if MigrationState(self.record.state) in _DONE:
            return
        await self.rollback()
        self.set_state(MigrationState.CANCELLED, "cancelled on request")

    async def _copy(self) -> None:
        inc = IncomingMigration(**self.record.incoming)
        q = self.qmp
        await set_source_capabilities(q)
        await q.execute("blockdev-add", {
            "driver": "nbd", "node-name": NBD_NODE, "export": inc.export,
            "server": {"type": "inet", "host": inc.host, "port": str(inc.nbd_port)},
        }, timeout=CMD_TIMEOUT_S)  # fmt: skip
        seq = q.last_seq
        await q.execute("blockdev-mirror", {
            "job-id": JOB, "device": BOOT_DEVICE, "target": NBD_NODE, "sync": "full",
        }, timeout=CMD_TIMEOUT_S)  # fmt: skip
        ready = await q.wait_event(_job_event(JOB), after=seq, timeout=DISK_COPY_TIMEOUT_S)
        _check_job(ready, "BLOCK_JOB_READY")
        self.record.disk_bytes = int(ready["data"].get("len", 0))

        self.set_state(MigrationState.COPYING_MEMORY)
        seq = q.last_seq
        host = f"[{inc.host}]" if ":" in inc.host else inc.host
        await q.execute("migrate", {"uri": f"tcp:{host}:{inc.migration_port}"},
                        timeout=CMD_TIMEOUT_S)
        event = await q.wait_event(
            lambda e: _migration_is(e, "pre-switchover", "failed", "cancelled")
            or _job_event(JOB)(e),
            after=seq, timeout=MEMORY_COPY_TIMEOUT_S,
        )
        if event["event"] != "MIGRATION":
            _check_job(event, "MIGRATION")  # the mirror ended (its target went away)
        if event["data"].get("status") != "pre-switchover":
            raise DriverError(await self._migration_error("the memory copy"))

        self.set_state(MigrationState.SWITCHING_OVER)
        seq = q.last_seq
        await q.execute("block-job-cancel", {"device": JOB}, timeout=CMD_TIMEOUT_S)
        done = await q.wait_event(
            lambda e: e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
            and e["data"].get("device") == JOB,
            after=seq, timeout=SWITCHOVER_TIMEOUT_S,
        )
        if done["data"].get("error"):
            raise DriverError(f"the disk copy failed at the switch-over: {done['data']['error']}")
        seq = q.last_seq
        await q.execute("migrate-continue", {"state": "pre-switchover"}, timeout=CMD_TIMEOUT_S)
        end = await q.wait_event(lambda e: _migration_is(e, "completed", "failed", "cancelled"),
                                 after=seq, timeout=SWITCHOVER_TIMEOUT_S)
        if end["data"].get("status") != "completed":
            raise DriverError(await self._migration_error("the switch-over"))
        info = await q.execute("query-migrate", timeout=CMD_TIMEOUT_S)
        self.record.downtime_ms = int(info.get("downtime", 0))
        self.record.total_s = round(int(info.get("total-time", 0)) / 1000.0, 3)
        with contextlib.suppress(DriverError):
            await q.execute("blockdev-del", {"node-name": NBD_NODE}, timeout=CMD_TIMEOUT_S)
        self.set_state(MigrationState.COMPLETED)

    async def _migration_error(self, stage: str) -> str:
        info: Any = {}
        with contextlib.suppress(DriverError):
            info = await self.qmp.execute("query-migrate", timeout=CMD_TIMEOUT_S)
        desc = info.get("error-desc") if isinstance(info, dict) else None
        return f"{stage} failed: {desc or info.get('status', 'unknown') if info else 'unknown'}"

    async def rollback(self) -> None:
        """Back to a source that runs alone: no migration, no mirror, no NBD node."""
        await rollback_source(self.qmp)


async def rollback_source(q: QMPSession) -> None:
    with contextlib.suppress(DriverError):
        info = await q.execute("query-migrate", timeout=CMD_TIMEOUT_S)
        if info.get("status") not in (None, "none", "completed", "failed", "cancelled"):
            seq = q.last_seq
            await q.execute("migrate_cancel", timeout=CMD_TIMEOUT_S)
            with contextlib.suppress(DriverError):
                await q.wait_event(lambda e: _migration_is(e, "failed", "cancelled"),
                                   after=seq, timeout=30.0)
    with contextlib.suppress(DriverError):
        jobs = await q.execute("query-block-jobs", timeout=CMD_TIMEOUT_S)
        if any(j.get("device") == JOB for j in jobs):
            seq = q.last_seq
            await q.execute("block-job-cancel", {"device": JOB, "force": True},
                            timeout=CMD_TIMEOUT_S)
            with contextlib.suppress(DriverError):
                await q.wait_event(_job_event(JOB), after=seq, timeout=30.0)
    with contextlib.suppress(DriverError):
        nodes = await q.execute("query-named-block-nodes", {"flat": True},
                                timeout=CMD_TIMEOUT_S)
        if any(n.get("node-name") == NBD_NODE for n in nodes):
            await q.execute("blockdev-del", {"node-name": NBD_NODE}, timeout=CMD_TIMEOUT_S)
    status = await q.execute("query-status", timeout=CMD_TIMEOUT_S)
    migrate = await q.execute("query-migrate", timeout=CMD_TIMEOUT_S)
    if status.get("status") in ("paused", "finish-migrate", "postmigrate") and migrate.get(
        "status"
    ) != "completed":
        await q.execute("cont", timeout=CMD_TIMEOUT_S)


async def source_progress(q: QMPSession, record: Record) -> MigrationProgress:
    """Numbers asked of QEMU when someone looks (the states themselves come from events)."""
    disk_copied = disk_total = record.disk_bytes  # past the disk copy: all of it
    with contextlib.suppress(DriverError):
        for job in await q.execute("query-block-jobs", timeout=CMD_TIMEOUT_S):
            if job.get("device") == JOB:
                disk_copied, disk_total = int(job.get("offset", 0)), int(job.get("len", 0))
    info: dict[str, Any] = {}
    with contextlib.suppress(DriverError):
        info = await q.execute("query-migrate", timeout=CMD_TIMEOUT_S)
    ram = info.get("ram", {}) if isinstance(info, dict) else {}
    return MigrationProgress(
        disk_bytes_copied=disk_copied,
        disk_bytes_total=disk_total,
        ram_bytes_copied=int(ram.get("transferred", 0)),
        ram_bytes_total=int(ram.get("total", 0)),
        dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)),
        expected_downtime_ms=int(info.get("expected-downtime", 0)),
        passes=int(ram.get("dirty-sync-count", 0)),
    )


def _job_event(job: str) -> Any:
    names = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")

    def match(event: Event) -> bool:
        return event["event"] in names and event["data"].get("device") == job

    return match


def _check_job(event: Event, wanted: str) -> None:
    if event["event"] != wanted or event["data"].get("error"):
        error = event["data"].get("error") or event["event"].lower().replace("_", " ")
        raise DriverError(f"the disk copy failed: {error}")


def _migration_is(event: Event, *statuses: str) -> bool:
    return event["event"] == "MIGRATION" and event["data"].get("status") in statuses
