"""The volumes of an instance evacuated from a down host (services/host_evacuate).

- A volume stored on another host, one that is up, follows the instance: it is attached
  again from the instance's new host over a new NBD export (a fresh name, key and port), so
  the storage host's daemon is restarted with it and the export the down host's QEMU may
  still hold is gone: a host that was only cut off cannot write to the volume once its
  instance runs elsewhere. On the new host itself (placement avoids it when it can) it is a
  local attachment. Nothing of the volume is copied or lost.
- A volume stored on the down host (a local file there), or on another host that is down
  too, cannot follow: it is detached from the instance, which restarts without it. It shows
  `error` (its storage host is down: services/storage_down) and is `available` once its host
  is back and has let go of it; attach it again then.
- A volume the user was detaching is released at once: the VM that held it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from cumulo.db.tables import VolumeRow
from cumulo.domain.volume import VolumeState
from cumulo.services import storage_down, volume_exports
from cumulo.services.migration_volumes import volumes_of


@dataclass
class Outcome:
    followed: list[str] = field(default_factory=list)  # names: attached from the new host
    left: list[str] = field(default_factory=list)  # names: stored on a down host, detached
    wake: set[str] = field(default_factory=set)  # their storage hosts


def storing_hosts(s: Session, instance_id: str) -> set[str]:
    """The hosts storing the instance's volumes (placement prefers others)."""
    return {v.host_id for v in volumes_of(s, instance_id) if v.host_id}


def move(s: Session, instance_id: str, instance: str, destination: str) -> Outcome:
    """The instance `instance_id` (named `instance`) restarts on host `destination`: its
    volumes follow it or are left behind (see the module). Raises when a volume cannot be
    exported to the destination (no underlay network): the caller undoes the whole move."""
    out = Outcome()
    rows = volumes_of(s, instance_id)
    down = storage_down.down_hosts(s, (v.host_id for v in rows))
    for v in rows:
        out.wake |= {v.host_id} if v.host_id else set()
        if v.host_id is None or v.host_id in down:
            if v.want_instance_id == instance_id:
                out.left.append(v.name)
            if v.client_host_id is None:  # a file of that host: it lets go once back
                v.want_instance_id, v.state = None, VolumeState.DETACHING
            else:
                _release(v)
        elif v.want_instance_id != instance_id:
            _release(v)
        else:
            if v.host_id == destination:
                _unexport(v)
            else:
                volume_exports.export_to(s, v, destination, instance)
            v.state = VolumeState.ATTACHING  # until the new host says it holds it
            out.followed.append(v.name)
        v.generation += 1  # what the down host said of it is stale
        v.state_reason = ""
    return out


def _release(v: VolumeRow) -> None:
    """Detached at once: the VM that held it is gone (its host is down, and destroys its copy
    of the instance when it is back)."""
    v.want_instance_id = v.attached_to = None
    v.state = VolumeState.AVAILABLE
    _unexport(v)


def _unexport(v: VolumeRow) -> None:
    v.client_host_id = v.export_name = v.export_key = None
    v.export_port = None
