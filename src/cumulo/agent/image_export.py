"""`image create-from-instance` on the host: flatten the stopped VM's boot disk into a
standalone qcow2 inside the host dir and upload it to the API's image store, which checks it
like any import and records the image (see cumulo.services.image_exports).

One background task per export (passes go on meanwhile); the VM is not started while its
disk is being read. Failures are reported with a stable code the user sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

from cumulo.agent.storage.disks import StorageError, run_tool
from cumulo.domain.ids import is_id

log = structlog.get_logger("cumulo.agent")

UPLOAD_ATTEMPTS = 3


class ExportApi:
    """What an export needs of the API (cumulo.agent.api_client.ApiClient, bound to a host)."""

    def __init__(self, status: Callable[[str, str, str, str], Awaitable[None]],
                 upload: Callable[[str, Path], Awaitable[httpx.Response]]) -> None:
        self.status = status  # (export id, state, code, reason)
        self.upload = upload  # (export id, file) -> the API's answer


class ExportRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Exporter:
    api: ExportApi
    instances_dir: Path
    work_dir: Path  # <host dir>/exports: the flattened disks, while they are uploaded
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # export id -> job
    _vms: dict[str, str] = field(default_factory=dict)  # export id -> vm id
    _finished: set[str] = field(default_factory=set)
    _again: set[str] = field(default_factory=set)  # interrupted: the API never heard the end

    def busy(self, vm_id: str) -> bool:
        """True while the VM's disk is being exported: it must not start."""
        return vm_id in self._vms.values()

    def ensure(self, export_id: str, vm_id: str, running: bool) -> None:
        """Start the export unless it runs or ran already (the assignment names it until the
        API has recorded the outcome)."""
        if export_id in self._tasks or export_id in self._finished:
            return
        if not is_id(export_id) or not is_id(vm_id):
            log.warning("export_refused", export_id=export_id, vm_id=vm_id)
            return
        self._vms[export_id] = vm_id
        task = asyncio.create_task(self._run(export_id, vm_id, running))
        self._tasks[export_id] = task
        task.add_done_callback(functools.partial(self._done, export_id))

    def _done(self, export_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(export_id, None)
        self._vms.pop(export_id, None)
        if export_id in self._again:
            self._again.discard(export_id)  # the next pass that still names it tries again
        else:
            self._finished.add(export_id)

    def forget(self, open_exports: set[str]) -> None:
        """Exports the API no longer names need no memory."""
        self._finished &= open_exports

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _run(self, export_id: str, vm_id: str, running: bool) -> None:
        out = self.work_dir / f"{export_id}.qcow2"
        try:
            await self.api.status(export_id, "running", "", "")
            if running:
                raise ExportRefused("instance_not_stopped", "the instance is running")
            disk = self.instances_dir / vm_id / "disk.qcow2"
            if not disk.is_file():
                raise ExportRefused("instance_disk_missing",
                                    "the instance has no disk yet (it never started)")
            self.work_dir.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            try:  # flattened: the image is standalone, its backing file left behind
                await run_tool("qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2",
                               str(disk), str(out))
            except StorageError as e:
                code = "instance_not_stopped" if "lock" in str(e) else "export_failed"
                raise ExportRefused(code, f"cannot read the disk: {e}") from None
            await self._upload(export_id, out)
            log.info("export_done", export_id=export_id, vm_id=vm_id)
        except ExportRefused as e:
            log.warning("export_failed", export_id=export_id, vm_id=vm_id, error=str(e))
            with contextlib.suppress(httpx.HTTPError):
                await self.api.status(export_id, "failed", e.code, str(e))
        except httpx.TransportError as e:
            # The API is away: done again while the assignment still names the export.
            log.warning("export_interrupted", export_id=export_id, error=str(e))
            self._again.add(export_id)
        except httpx.HTTPStatusError as e:
            # Refused (finished, cancelled, gone): the API has decided the outcome.
            log.warning("export_refused", export_id=export_id, error=str(e))
        finally:
            out.unlink(missing_ok=True)

    async def _upload(self, export_id: str, path: Path) -> None:
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                r = await self.api.upload(export_id, path)
            except httpx.TransportError as e:
                log.warning("export_upload_interrupted", export_id=export_id,
                            attempt=attempt, error=str(e))
                await asyncio.sleep(attempt)
                continue
            if r.status_code < 300 or r.status_code in (400, 404, 409, 413, 507):
                return  # recorded, or refused and recorded as failed by the API itself
            log.warning("export_upload_refused", export_id=export_id,
                        status=r.status_code, body=r.text[:200])
            await asyncio.sleep(attempt)
        raise ExportRefused("export_failed", "the upload to the image store failed")
