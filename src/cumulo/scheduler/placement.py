"""Placement: filters then weighers, as pure functions over host capacity.

When no host fits, the answer says why, host by host, so the user (or operator) sees
"no host in zone local-1a has 4096 MiB free" rather than a bare failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class HostCapacity:
    host_id: str
    name: str
    zone: str
    architectures: frozenset[str]
    up: bool
    vcpus_total: int
    ram_mib_total: int
    vcpus_used: int
    ram_mib_used: int
    # The filesystem of the host's state dir as its agent last reported it (None: not
    # reported, and not checked), and the disk claims of the instances placed there: all of
    # them, and those the host has not started yet (their files are not written, so the
    # reported free space does not show them).
    disk_total_mib: int | None = None
    disk_free_mib: int | None = None
    disk_claimed_mib: int = 0
    disk_pending_mib: int = 0

    @property
    def disk_room_mib(self) -> int | None:
        """Disk a new instance may claim: what is free now, less the claims not yet written,
        and no more than the total, less every claim (thin disks grow into their claims)."""
        if self.disk_total_mib is None or self.disk_free_mib is None:
            return None
        return max(0, min(self.disk_free_mib - self.disk_pending_mib,
                          self.disk_total_mib - self.disk_claimed_mib))

    @property
    def vcpus_free(self) -> int:
        return self.vcpus_total - self.vcpus_used

    @property
    def ram_mib_free(self) -> int:
        return self.ram_mib_total - self.ram_mib_used


@dataclass(frozen=True)
class Request:
    zone: str
    arch: str
    vcpus: int
    ram_mib: int
    disk_mib: int = 0  # see disk_claim_mib


def disk_claim_mib(image_bytes: int, disk_gib: int, allocation_ratio: float) -> int:
    """What an instance claims of its host's disk: room for its image (a host may have to hold
    a copy), and its thin disk's share under the overcommit ratio (1: the whole disk; 2: half,
    betting that disks do not fill up all at once)."""
    return math.ceil(image_bytes / MIB) + math.ceil(disk_gib * 1024 / allocation_ratio)


@dataclass(frozen=True)
class Placement:
    host: HostCapacity | None
    reasons: tuple[str, ...] = ()  # why each rejected host was rejected

    def explain(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "no host is registered"


Filter = Callable[[Request, HostCapacity], str | None]  # None: passes; else why not


def _zone(r: Request, h: HostCapacity) -> str | None:
    return None if h.zone == r.zone else f"{h.name}: in zone {h.zone}"


def _up(r: Request, h: HostCapacity) -> str | None:
    return None if h.up else f"{h.name}: host is down"


def _arch(r: Request, h: HostCapacity) -> str | None:
    return None if r.arch in h.architectures else f"{h.name}: does not run {r.arch}"


def _ram(r: Request, h: HostCapacity) -> str | None:
    if h.ram_mib_free >= r.ram_mib:
        return None
    return f"{h.name}: {h.ram_mib_free} MiB RAM free, {r.ram_mib} MiB needed"


def _vcpus(r: Request, h: HostCapacity) -> str | None:
    if h.vcpus_free >= r.vcpus:
        return None
    return f"{h.name}: {h.vcpus_free} vCPUs free, {r.vcpus} needed"


def _disk(r: Request, h: HostCapacity) -> str | None:
    room = h.disk_room_mib
    if room is None or room >= r.disk_mib:
        return None
    return f"{h.name}: {room} MiB disk free, {r.disk_mib} MiB needed"


FILTERS: tuple[Filter, ...] = (_zone, _up, _arch, _ram, _vcpus, _disk)


def _spread(h: HostCapacity) -> float:
    """Prefer the emptiest host (by RAM share), so load and failure impact spread out."""
    return h.ram_mib_free / h.ram_mib_total if h.ram_mib_total else 0.0


def place(request: Request, hosts: Sequence[HostCapacity]) -> Placement:
    fitting: list[HostCapacity] = []
    reasons: list[str] = []
    for host in hosts:
        why = next((w for f in FILTERS if (w := f(request, host)) is not None), None)
        if why is None:
            fitting.append(host)
        elif host.zone == request.zone:  # hosts of other zones are not worth mentioning
            reasons.append(why)
    if not fitting:
        if not reasons:
            reasons.append(f"no host is registered in zone {request.zone}")
        return Placement(host=None, reasons=tuple(reasons))
    best = max(fitting, key=lambda h: (_spread(h), h.name))
    return Placement(host=best)


def largest_possible(hosts: Sequence[HostCapacity], arch: str, zone: str) -> tuple[int, int]:
    """(vcpus, ram_mib) of the biggest instance any up host of the zone could ever hold."""
    sized = [h for h in hosts if h.zone == zone and arch in h.architectures]
    if not sized:
        return (0, 0)
    return (max(h.vcpus_total for h in sized), max(h.ram_mib_total for h in sized))
