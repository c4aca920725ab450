"""`image create-from-instance`, done by the instance's host agent: the API never opens a
host's files.

`request` records an export (pending) and wakes the host, whose assignment for the instance
then carries the export's id. The agent flattens the stopped VM's disk into a standalone qcow2
inside its own host dir and uploads it (PUT /v1/agent/hosts/HOST/exports/ID with its host
token); the upload is checked like any import (qemu-img) and recorded, with the export marked
done, in one transaction. Or the agent reports why it could not (failed, with a stable code).
The user's request (POST /v1/images/from-instance) waits for either (`outcome`), so the
command behaves as it did when the API read the disk itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, ImageExportRow, ImageRow, InstanceRow
from cumulo.domain.errors import Conflict, CumuloError, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.domain.validation import dns_label, one_line
from cumulo.services import image_import, images, lookups
from cumulo.services.auth import require_agent, scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import ImageView

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
OPEN = (PENDING, RUNNING)
# What an agent may say went wrong (anything else is reported as export_failed).
AGENT_CODES = frozenset({"instance_disk_missing", "instance_not_stopped", "export_failed"})
EXPORT_TIMEOUT_S = 3600.0  # the whole job, for the largest disks
PICKUP_TIMEOUT_S = 60.0  # a pending export no agent took: its host is down or gone
POLL_S = 0.25
MAX_REASON = 500


class ExportFailed(CumuloError):
    code = "export_failed"
    status = 409


def _target(s: Session, inst: InstanceRow, name: str) -> image_import.Target:
    """What the new image's row will say: its base image's, but the project's own."""
    base = s.get(ImageRow, inst.image_id)
    if base is None:  # an image in use cannot be deleted: only a broken database gets here
        raise Conflict(f"instance {inst.name!r} has lost its image", code="instance_disk_missing")
    return image_import.Target(
        name=name, arch=base.arch, boot=base.boot, default_user=base.default_user,
        os=base.os, project_id=inst.project_id, min_ram_mib=base.min_ram_mib,
        kernel_path=base.kernel_path, kernel_size=base.kernel_size,
        kernel_sha256=base.kernel_sha256, initrd_path=base.initrd_path,
        initrd_size=base.initrd_size, initrd_sha256=base.initrd_sha256,
        kernel_cmdline=base.kernel_cmdline,
    )


def request(svc: Services, who: Principal, project: str | None, name: str,
            instance: str) -> str:
    """Record an export of a stopped instance's disk into image `name`; its id."""
    image_import.store(svc)
    dns_label(name, "image name")
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = lookups.instance_row(s, prj, instance)
        if (row.state != InstanceState.STOPPED.value
                or row.desired_power != DesiredPower.STOPPED.value):
            raise Conflict(
                f"instance {row.name!r} is {row.state}: stop it first", code="instance_not_stopped"
            )
        if row.host_id is None:
            raise Conflict(f"instance {row.name!r} has no disk yet", code="instance_disk_missing")
        image_import.refuse_taken(s, _target(s, row, name))
        busy = s.scalar(select(ImageExportRow.id).where(
            ImageExportRow.instance_id == row.id, ImageExportRow.state.in_(OPEN)))
        if busy is not None:
            raise Conflict(f"an image is already being made from instance {row.name!r}",
                           code="export_in_progress")
        export_id = new_id("exp")
        s.add(ImageExportRow(id=export_id, instance_id=row.id, host_id=row.host_id,
                             project_id=row.project_id, name=name, state=PENDING))
        host_id, instance_id = row.host_id, row.id
    svc.notifier.notify(host_id, [instance_id])
    return export_id


def outcome(svc: Services, export_id: str, waited_s: float,
            timeout_s: float = EXPORT_TIMEOUT_S,
            pickup_s: float = PICKUP_TIMEOUT_S) -> ImageView | None:
    """The new image once the export is done, None while it runs; raises what it failed
    with. `waited_s`: since the request (an export no host took, or too long, fails)."""
    with svc.db.session() as s:
        row = s.get(ImageExportRow, export_id)
        if row is None:
            raise NotFound("the instance was deleted while its disk was being exported",
                           code="unknown_instance")
        if row.state == DONE:
            return images.view_of(s, row.project_id, row.name)
        if row.state == FAILED:
            raise ExportFailed(row.reason, code=row.code)
        state, host_id, instance_id = row.state, row.host_id, row.instance_id
    if (state == PENDING and waited_s > pickup_s) or waited_s > timeout_s:
        host = _host_name(svc, host_id)
        why = (f"host {host} did not take the export within {pickup_s:g} s (is it up?)"
               if state == PENDING else f"the export took longer than {timeout_s:g} s")
        code = "host_unreachable" if state == PENDING else "export_failed"
        if _finish(svc, export_id, FAILED, code, why):
            svc.notifier.notify(host_id, [instance_id])
        return outcome(svc, export_id, 0.0)  # what it ended as (the agent may have won)
    return None


def wait(svc: Services, export_id: str, **limits: float) -> ImageView:
    """`outcome` once there is one, waited for in this thread (tests, scripts). The API
    waits on its event loop instead (api/routers/images.py): a thread of its long-job pool
    held here could be the one the upload that ends the job needs."""
    started = time.monotonic()
    while (view := outcome(svc, export_id, time.monotonic() - started, **limits)) is None:
        time.sleep(POLL_S)
    return view


def _host_name(svc: Services, host_id: str) -> str:
    with svc.db.session() as s:
        return s.scalar(select(HostRow.name).where(HostRow.id == host_id)) or host_id


def _finish(svc: Services, export_id: str, state: str, code: str, reason: str) -> bool:
    """Mark an open export done or failed; False when it was not open any more."""
    with svc.db.session() as s:
        row = s.get(ImageExportRow, export_id, with_for_update=True)
        if row is None or row.state not in OPEN:
            return False
        row.state, row.code, row.reason = state, code, one_line(reason, MAX_REASON)
        return True


def _open_export(s: Session, who: Principal, host: str, export_id: str) -> ImageExportRow:
    """The export `export_id` of the agent's own host, still open."""
    require_agent(who, host)
    row = s.get(ImageExportRow, export_id)
    host_id = s.scalar(select(HostRow.id).where(HostRow.name == host))
    if row is None or row.host_id != host_id:
        raise NotFound(f"no export {export_id!r} on host {host!r}", code="unknown_export")
    if row.state not in OPEN:
        raise Conflict(f"export {export_id} is {row.state} already", code="export_finished")
    return row


def report(svc: Services, who: Principal, host: str, export_id: str, state: str,
           code: str = "", reason: str = "") -> None:
    """The agent took the export (running) or could not do it (failed, with why)."""
    with svc.db.session() as s:
        row = _open_export(s, who, host, export_id)
        if state == RUNNING:
            row.state = RUNNING
            return
        instance_id, host_id = row.instance_id, row.host_id
    _finish(svc, export_id, FAILED, code if code in AGENT_CODES else "export_failed",
            reason or "the host could not export the disk")
    svc.notifier.notify(host_id, [instance_id])


def target_of_upload(svc: Services, who: Principal, host: str,
                     export_id: str) -> image_import.Target:
    """Before an agent's upload is read: the export is its own and open."""
    image_import.store(svc)
    with svc.db.session() as s:
        row = _open_export(s, who, host, export_id)
        inst = s.get(InstanceRow, row.instance_id)
        if inst is None:
            raise NotFound("the instance is gone", code="unknown_instance")
        return _target(s, inst, row.name)


def record_upload(svc: Services, export_id: str, t: image_import.Target,
                  staged: Path) -> ImageView:
    """Check and record the uploaded disk as the new image, and the export as done, at once.
    A refused upload fails the export with the refusal's code (the user sees it)."""
    def done(s: Session, image_id: str) -> None:
        row = s.get(ImageExportRow, export_id, with_for_update=True)
        if row is None or row.state not in OPEN:
            raise Conflict(f"export {export_id} was cancelled", code="export_finished")
        row.state, row.image_id = DONE, image_id

    try:
        view = image_import.import_staged(svc, t, staged, then=done)
    except CumuloError as e:
        if e.code != "export_finished":
            _finish(svc, export_id, FAILED, e.code, e.message)
        _wake(svc, export_id)
        raise
    _wake(svc, export_id)
    return view


def _wake(svc: Services, export_id: str) -> None:
    """The instance's assignment no longer carries the export: its host may start it."""
    with svc.db.session() as s:
        row = s.get(ImageExportRow, export_id)
        if row is None:
            return
        host_id, instance_id = row.host_id, row.instance_id
    svc.notifier.notify(host_id, [instance_id])


# Built once: every long-poll answer runs it (an indexed look-up in a table that is empty
# but for the exports under way).
_OPEN_OF = (select(ImageExportRow.instance_id, ImageExportRow.id)
            .where(ImageExportRow.instance_id.in_(bindparam("ids", expanding=True)),
                   ImageExportRow.state.in_(OPEN)))


def open_exports(s: Session, instance_ids: list[str]) -> dict[str, str]:
    """instance id -> the id of its open export (for the hosts' assignments)."""
    if not instance_ids:
        return {}
    return {iid: eid for iid, eid in s.connection().execute(_OPEN_OF, {"ids": instance_ids})}
