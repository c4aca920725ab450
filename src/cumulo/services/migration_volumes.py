"""The volumes of an instance that moves (services/migrations, the cold branch).

A volume stored on another host than the instance's is attached over NBD: it is not on the
source's disk, so it can follow a stopped instance (its attachment's client host becomes the
destination when the instance arrives; nothing is copied). What cannot follow is refused:
a volume stored on the source host (a local file: copying it is not built), a volume stored
on the destination (it would turn from a network attachment into a local one) and a volume
half-way through an attach or detach.

A running instance's network volumes follow a live migration the same way: while it is under
way the destination is assigned them too (agent_views), so its incoming QEMU opens the same
exports (the storage host serves both clients); only the boot disk is mirrored, and the
source's QEMU lets go when it stops after the switch-over.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cumulo.db.tables import InstanceRow, VolumeRow
from cumulo.domain.errors import Conflict
from cumulo.services import storage_down


def volumes_of(s: Session, instance_id: str) -> list[VolumeRow]:
    return list(s.scalars(select(VolumeRow).where(
        or_(VolumeRow.attached_to == instance_id, VolumeRow.want_instance_id == instance_id))
        .order_by(VolumeRow.created_at, VolumeRow.id)))


def check(s: Session, row: InstanceRow) -> dict[str, str]:
    """Refuse the volumes that cannot follow `row`; return the hosts storing its volumes
    (host id -> one volume's name): none of them may be the destination."""
    stored: dict[str, str] = {}
    for v in volumes_of(s, row.id):
        if v.want_instance_id != v.attached_to:
            raise Conflict(f"instance {row.name!r}: volume {v.name} is being attached or "
                           "detached; move it once that is done", code="volume_busy")
        if v.host_id is None or v.host_id == row.host_id:
            raise Conflict(f"instance {row.name!r}: volume {v.name} is stored on its own "
                           "host (a local file); only volumes stored on another host follow "
                           "a move (detach it first)", code="volume_on_source")
        stored.setdefault(v.host_id, v.name)
    for host_id, name in stored.items():
        # The destination's QEMU opens the export as it starts: it must be served.
        storage_down.refuse(s, host_id, f"move instance {row.name!r} with volume {name}")
    return stored


def refuse_destination(stored: dict[str, str], host_id: str, host_name: str) -> None:
    if host_id in stored:
        raise Conflict(f"host {host_name} stores volume {stored[host_id]} of the instance: a "
                       "move there is refused (its attachment would turn local); pick another "
                       "host", code="volume_on_destination")


def follow(s: Session, instance_id: str, destination_host_id: str) -> set[str]:
    """The instance arrived on `destination_host_id`: its network volumes' client host is
    now the destination (the same export: the source's client side went with the stopped
    VM). Returns the hosts to wake (the storage hosts and the destination)."""
    wake: set[str] = set()
    for v in volumes_of(s, instance_id):
        if v.host_id is None or v.host_id == destination_host_id:
            continue  # refused at the start; never made local behind the user's back
        v.client_host_id = destination_host_id
        v.generation += 1
        wake |= {v.host_id, destination_host_id}
    return wake
