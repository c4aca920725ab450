"""The agent side of the API: what a host must run, and what it reports it runs."""

from __future__ import annotations

import base64

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, ImageRow, InstanceRow, ProjectRow
from cumulo.domain.errors import NotFound
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.protocol import Assignment, ImageRef, Observation
from cumulo.services import hosts
from cumulo.services.auth import require_agent
from cumulo.services.context import Principal, Services

DELETED = "deleted"


def _host(s: Session, name: str) -> HostRow:
    row = s.scalar(select(HostRow).where(HostRow.name == name))
    if row is None:
        raise NotFound(f"host {name!r} is not registered", code="unknown_host")
    return row


def host_id(svc: Services, who: Principal, name: str) -> str:
    require_agent(who, name)
    with svc.db.session() as s:
        return _host(s, name).id


def assignments(svc: Services, who: Principal, name: str) -> list[Assignment]:
    require_agent(who, name)
    with svc.db.session() as s:
        host = _host(s, name)
        hosts.heartbeat(s, host)
        rows = (
            s.execute(
                select(InstanceRow, ImageRow, ProjectRow.name)
                .join(ImageRow, ImageRow.id == InstanceRow.image_id)
                .join(ProjectRow, ProjectRow.id == InstanceRow.project_id)
                .where(InstanceRow.host_id == host.id)
            )
            .tuples()
            .all()
        )
        return [
            Assignment(
                id=i.id,
                hostname=i.name,
                project=pname,
                arch=i.arch,
                vcpus=i.vcpus,
                ram_mib=i.ram_mib,
                disk_gib=i.disk_gib,
                state=i.state,
                desired_power=i.desired_power,
                generation=i.generation,
                reboot_seq=i.reboot_seq,
                reboot_done_seq=i.reboot_done_seq,
                image=ImageRef(
                    id=img.id,
                    boot=img.boot,
                    disk_path=img.disk_path,
                    kernel_path=img.kernel_path,
                    initrd_path=img.initrd_path,
                    kernel_cmdline=img.kernel_cmdline,
                ),
                user_data_b64=base64.b64encode(i.user_data).decode() if i.user_data else None,
            )
            for i, img, pname in rows
        ]


def report(svc: Services, who: Principal, name: str, observations: list[Observation]) -> None:
    """Apply what the agent saw. Stale reports (older generation) cannot undo a newer request."""
    require_agent(who, name)
    with svc.db.session() as s:
        host = _host(s, name)
        hosts.heartbeat(s, host)
        ids = [o.id for o in observations]
        rows = {
            r.id: r
            for r in s.scalars(
                select(InstanceRow).where(InstanceRow.id.in_(ids), InstanceRow.host_id == host.id)
            )
        }
        for obs in observations:
            row = rows.get(obs.id)
            if row is None or obs.generation < row.generation:
                continue
            if obs.state == DELETED:
                if row.desired_power == DesiredPower.DELETED.value:
                    s.delete(row)
                continue
            state = InstanceState(obs.state)
            if obs.reboot_done_seq is not None:
                row.reboot_done_seq = max(row.reboot_done_seq, obs.reboot_done_seq)
            if row.desired_power == DesiredPower.DELETED.value:
                continue  # stays "deleting" until the agent reports it gone
            if state is InstanceState.RUNNING and row.reboot_done_seq < row.reboot_seq:
                state = InstanceState.REBOOTING
            if obs.guest_initiated and state is InstanceState.STOPPED:
                row.desired_power = DesiredPower.STOPPED.value
            if row.state != state.value or row.state_reason != obs.reason:
                row.state, row.state_reason = state.value, obs.reason
