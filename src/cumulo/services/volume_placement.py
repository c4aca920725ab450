"""Where a new volume is stored, and the NBD export of a volume attached across hosts
(pure choices; services/volumes.py reads the rows and records them)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cumulo.domain.errors import InsufficientCapacity

# The storage host's NBD ports: one per exported volume (a qemu-storage-daemon each).
EXPORT_PORTS = range(10810, 11810)


@dataclass(frozen=True)
class StorageCandidate:
    host_id: str
    name: str
    up: bool  # up and enabled
    storage: bool  # `storage = true` in its agent config
    volume_gib: int  # what its volumes already take


def storage_host(zone: str, hosts: list[StorageCandidate]) -> str:
    """The zone's hosts marked `storage` when it has any (else every host); of those up, the
    one storing the fewest GiB (then by name)."""
    marked = any(h.storage for h in hosts)
    pool = [h for h in hosts if h.up and (h.storage or not marked)]
    if not pool:
        what = "storage host" if marked else "host"
        raise InsufficientCapacity(f"no {what} is up and enabled in zone {zone}")
    return min(pool, key=lambda h: (h.volume_gib, h.name)).host_id


@dataclass(frozen=True)
class Export:
    name: str  # the secret export name (128 bits)
    key: str  # the TLS-PSK key (256 bits, hex)
    port: int


def new_export(used_ports: set[int]) -> Export:
    """A fresh export: new secrets, and the storage host's lowest free port."""
    port = next((p for p in EXPORT_PORTS if p not in used_ports), None)
    if port is None:
        raise InsufficientCapacity(f"the storage host exports {len(EXPORT_PORTS)} volumes "
                                   "already")
    return Export(secrets.token_hex(16), secrets.token_hex(32), port)
