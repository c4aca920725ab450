"""Volumes and snapshots whose storage host is down (its agent silent: hosts.sweep_down).

They show `error` with the reason ("its storage host h is down"), and what needs that host
is refused with `storage_host_down`: an attach, a snapshot, a grow, a volume made from a
snapshot stored there, a move of an instance using such a volume, the start of a stopped
instance attached to one. A detach and a delete are
taken (they complete when the host is back). The state is derived from the host's liveness at
each read, never stored: the moment the host is up again, the volume shows what its hosts
last reported (`in-use`, `available`), with nothing to undo. The instance using the volume
runs on: its QEMU's NBD client fails the guest's I/O after a few seconds (reads get EIO; a
write pauses the VM under the `stop` write-error policy, until the export is back) and
reconnects by itself when the storage host serves the export again.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, not_, select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, VolumeRow
from cumulo.domain.errors import Conflict
from cumulo.domain.volume import VolumeState
from cumulo.services import events, hosts

CODE = "storage_host_down"


def down_hosts(s: Session, host_ids: Iterable[str | None]) -> dict[str, str]:
    """Of these hosts, those that are down: id -> name (as placement has it: not heard from
    for hosts.HOST_DOWN_AFTER, or marked down)."""
    ids = {h for h in host_ids if h}
    if not ids:
        return {}
    up = and_(HostRow.state == "up", HostRow.last_seen > hosts.seen_after())
    return dict(s.execute(select(HostRow.id, HostRow.name)
                          .where(HostRow.id.in_(ids), not_(up))).all())


def reason(host_name: str) -> str:
    return (f"its storage host {host_name} is down: its data cannot be read or written until "
            "the host is back")


def shown(state: str, state_reason: str, down: str | None) -> tuple[str, str]:
    """The (state, reason) a user sees of a volume or snapshot whose storage host is `down`
    (a host name; None: up). One being deleted still shows `deleting` (it is deleted when
    the host is back)."""
    if down is None:
        return state, state_reason
    if state == VolumeState.DELETING:
        return state, f"waits for its storage host {down}, which is down"
    return VolumeState.ERROR.value, reason(down)


def refuse(s: Session, host_id: str | None, what: str) -> None:
    """Raise Conflict (storage_host_down) when `host_id` (a volume's or snapshot's storage
    host) is down; `what` names the request, e.g. "attach volume 'data'"."""
    down = down_hosts(s, [host_id]).get(host_id or "")
    if down is not None:
        raise Conflict(f"cannot {what}: {reason(down)}", code=CODE)


def refuse_start(s: Session, instance_id: str, name: str) -> None:
    """Raise Conflict (storage_host_down) when a volume the instance boots with is stored on a
    host that is down: its QEMU could not open the export, and the start would fail."""
    stored = dict(s.execute(select(VolumeRow.host_id, VolumeRow.name)
                            .where(VolumeRow.want_instance_id == instance_id)).all())
    down = down_hosts(s, stored)
    if down:
        host_id = min(down)
        raise Conflict(f"cannot start instance {name!r} with volume {stored[host_id]!r}: "
                       f"{reason(down[host_id])}", code=CODE)


def volume_events(s: Session, host_id: str, kind: str, said: str) -> list[events.Event]:
    """An event for each volume stored on the host (not being deleted), in its project's
    log: its storage host went down (`storage_host_down`) or is back (`storage_host_up`)."""
    return [events.Event(project_id, "volume", vid, name, kind, "system", said)
            for vid, name, project_id in s.execute(
                select(VolumeRow.id, VolumeRow.name, VolumeRow.project_id)
                .where(VolumeRow.host_id == host_id, VolumeRow.desired == "present"))]
