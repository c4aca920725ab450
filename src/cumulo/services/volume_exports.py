"""The NBD export of a volume attached to an instance of another host than its storage host:
made at an attach (services/volumes) and again when an evacuated instance takes its volumes
to a new host (services/evacuate_volumes)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, VolumeRow
from cumulo.domain.errors import InvalidInput
from cumulo.services.volume_placement import new_export


def export_to(s: Session, row: VolumeRow, client_host_id: str | None, instance: str) -> None:
    """A new NBD export of `row` for `client_host_id` (fresh secrets, a free port of the
    storage host: a client holding an older export's name or key opens nothing). Raises,
    changing nothing, when the two hosts share no underlay network."""
    underlays = dict(s.execute(select(HostRow.id, HostRow.underlay_ip).where(
        HostRow.id.in_([row.host_id, client_host_id]))).all())
    if not row.host_id or not underlays.get(row.host_id) or \
            not underlays.get(client_host_id or ""):
        raise InvalidInput(f"volume {row.name!r} is stored on another host than instance "
                           f"{instance!r}, and the two hosts share no underlay network",
                           code="host_mismatch")
    used = set(s.scalars(select(VolumeRow.export_port).where(
        VolumeRow.host_id == row.host_id, VolumeRow.export_port.is_not(None))))
    export = new_export({p for p in used if p is not None})
    row.client_host_id = client_host_id
    row.export_name, row.export_key, row.export_port = export.name, export.key, export.port
