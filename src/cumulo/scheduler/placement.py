"""Placement: filters then weighers, as pure functions over host capacity.

Each filter says why a host cannot take a request (a `Rejection`) or lets it pass; the first
filter a host fails is its reason. When no host fits, the answer counts the hosts of the zone
per reason, on one line however many hosts there are:

    no host fits: zone local-1a has 3 hosts: 2 lack 4096 MiB RAM (largest free: 1024), 1 disabled

Capacity is allocatable capacity: what a host registered times the allocation ratio
(`cpu_allocation_ratio`, `ram_allocation_ratio`), less what its instances hold.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

MIB = 1024 * 1024


@dataclass(frozen=True)
class HostCapacity:
    host_id: str
    name: str
    zone: str
    architectures: frozenset[str]
    up: bool
    vcpus_total: int  # as the host registered them
    ram_mib_total: int
    vcpus_used: int
    ram_mib_used: int
    enabled: bool = True
    cpu_ratio: float = 1.0
    ram_ratio: float = 1.0
    instances: int = 0  # shown, not weighed
    # The filesystem of the host's state dir as its agent last reported it (None: not
    # reported, and not checked), and the disk claims of the instances placed there: all of
    # them, and those the host has not started yet (their files are not written, so the
    # reported free space does not show them).
    disk_total_mib: int | None = None
    disk_free_mib: int | None = None
    disk_claimed_mib: int = 0
    disk_pending_mib: int = 0
    # A dedicated host: the project it is dedicated to and its dedicated-host id (None: a
    # shared host). Its capacity is not overcommitted (the ratios are 1.0).
    dedicated_to: str | None = None
    dedicated_id: str | None = None

    @property
    def disk_room_mib(self) -> int | None:
        """Disk a new instance may claim: what is free now, less the claims not yet written,
        and no more than the total, less every claim (thin disks grow into their claims)."""
        if self.disk_total_mib is None or self.disk_free_mib is None:
            return None
        return max(0, min(self.disk_free_mib - self.disk_pending_mib,
                          self.disk_total_mib - self.disk_claimed_mib))

    # Cached: placement reads them for every host of the zone at every create.
    @functools.cached_property
    def vcpus_allocatable(self) -> int:
        return allocatable(self.vcpus_total, self.cpu_ratio)

    @functools.cached_property
    def ram_mib_allocatable(self) -> int:
        return allocatable(self.ram_mib_total, self.ram_ratio)

    @property
    def vcpus_free(self) -> int:
        return self.vcpus_allocatable - self.vcpus_used

    @property
    def ram_mib_free(self) -> int:
        return self.ram_mib_allocatable - self.ram_mib_used


def allocatable(total: int, ratio: float) -> int:
    """What may be allocated of `total` under an overcommit `ratio`, rounded down (the
    epsilon absorbs float error: 100 * 0.29 is 28.999999999999996, which means 29)."""
    return math.floor(total * ratio + 1e-9)


class Strategy(Enum):
    SPREAD = "spread"  # every instance of the group on a different host
    CLUSTER = "cluster"  # every instance of the group on one host


@dataclass(frozen=True)
class GroupRule:
    """A placement group as placement sees it: its strategy and the hosts its instances are
    on (host ids)."""

    name: str
    strategy: Strategy
    hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Request:
    zone: str
    arch: str
    vcpus: int
    ram_mib: int
    group: GroupRule | None = None
    disk_mib: int = 0  # see disk_claim_mib
    # Tenancy: "shared" never lands on a dedicated host; "dedicated" only on a host dedicated
    # to `project` (the project's id), and on `dedicated_host` (its id) when given. A
    # migration builds its request from the instance's row the same way a create does.
    project: str = ""
    tenancy: str = "shared"
    dedicated_host: str | None = None


def disk_claim_mib(image_bytes: int, disk_gib: int, allocation_ratio: float) -> int:
    """What an instance claims of its host's disk: room for its image (a host may have to hold
    a copy), and its thin disk's share under the overcommit ratio (1: the whole disk; 2: half,
    betting that disks do not fill up all at once)."""
    return math.ceil(image_bytes / MIB) + math.ceil(disk_gib * 1024 / allocation_ratio)


class Why(Enum):
    """Why a host cannot take a request; the order is the filters' (first failed counts)."""

    DEDICATED_OTHER = "dedicated to another project"
    DEDICATED = "dedicated (not for shared tenancy)"
    NOT_DEDICATED = "not dedicated to the project"
    OTHER_DEDICATED = "another dedicated host"
    DISABLED = "disabled"
    DOWN = "down"
    ARCH = "arch"
    SPREAD = "spread"
    CLUSTER = "cluster"
    VCPUS = "vcpus"
    RAM = "ram"
    DISK = "disk"


@dataclass(frozen=True)
class Rejection:
    why: Why
    free: int = 0  # for VCPUS, RAM and DISK: what the host has free


Filter = Callable[[Request, HostCapacity], Rejection | None]  # None: the host passes


def _tenancy(r: Request, h: HostCapacity) -> Rejection | None:
    """Nothing of another project on a dedicated host, no shared tenancy on one either (EC2:
    a shared-tenancy instance never lands on a Dedicated Host), and dedicated tenancy only
    there (on the one asked for, if any)."""
    if h.dedicated_to is None:
        return None if r.tenancy != "dedicated" else Rejection(Why.NOT_DEDICATED)
    if h.dedicated_to != r.project:
        return Rejection(Why.DEDICATED_OTHER)
    if r.tenancy != "dedicated":
        return Rejection(Why.DEDICATED)
    if r.dedicated_host is not None and h.dedicated_id != r.dedicated_host:
        return Rejection(Why.OTHER_DEDICATED)
    return None


def _enabled(r: Request, h: HostCapacity) -> Rejection | None:
    return None if h.enabled else Rejection(Why.DISABLED)


def _up(r: Request, h: HostCapacity) -> Rejection | None:
    return None if h.up else Rejection(Why.DOWN)


def _arch(r: Request, h: HostCapacity) -> Rejection | None:
    return None if r.arch in h.architectures else Rejection(Why.ARCH)


def _group(r: Request, h: HostCapacity) -> Rejection | None:
    g = r.group
    if g is None:
        return None
    if g.strategy is Strategy.SPREAD:
        return Rejection(Why.SPREAD) if h.host_id in g.hosts else None
    return Rejection(Why.CLUSTER) if g.hosts and h.host_id not in g.hosts else None


def _vcpus(r: Request, h: HostCapacity) -> Rejection | None:
    free = h.vcpus_free
    return None if free >= r.vcpus else Rejection(Why.VCPUS, max(0, free))


def _ram(r: Request, h: HostCapacity) -> Rejection | None:
    free = h.ram_mib_free  # below 0 after the ratio was lowered: shown as 0
    return None if free >= r.ram_mib else Rejection(Why.RAM, max(0, free))


def _disk(r: Request, h: HostCapacity) -> Rejection | None:
    room = h.disk_room_mib
    return None if room is None or room >= r.disk_mib else Rejection(Why.DISK, room)


FILTERS: tuple[Filter, ...] = (_tenancy, _enabled, _up, _arch, _group, _vcpus, _ram, _disk)


def rejection(request: Request, host: HostCapacity) -> Rejection | None:
    """The first filter `host` fails for `request` (None: it can take it). Hosts of other
    zones are not asked: the caller gives the zone's hosts."""
    for f in FILTERS:
        why = f(request, host)
        if why is not None:
            return why
    return None


# Weighers: a key to maximise over the hosts that fit. Ties go to the first name, so that a
# placement is reproducible.
Weigher = Callable[[HostCapacity], tuple[float, float]]


def _share_free(h: HostCapacity) -> tuple[float, float]:
    ram = h.ram_mib_free / h.ram_mib_allocatable if h.ram_mib_allocatable else 0.0
    cpu = h.vcpus_free / h.vcpus_allocatable if h.vcpus_allocatable else 0.0
    return (ram, cpu)


def _spread(h: HostCapacity) -> tuple[float, float]:
    """The emptiest host (RAM share, then vCPUs): load and a failure's impact spread out."""
    return _share_free(h)


def _pack(h: HostCapacity) -> tuple[float, float]:
    """The fullest host that fits: whole hosts stay free for large instances (and can be
    switched off)."""
    ram, cpu = _share_free(h)
    return (-ram, -cpu)


WEIGHERS: dict[str, Weigher] = {"spread": _spread, "pack": _pack}


@dataclass(frozen=True)
class Placement:
    host: HostCapacity | None
    request: Request
    zone_hosts: int = 0  # hosts of the request's zone
    # Per reason: how many hosts, and the most any of them had free (VCPUS, RAM).
    counts: dict[Why, tuple[int, int]] = field(default_factory=dict)

    def explain(self) -> str:
        """Why no host fits, on one line (see the module's docstring)."""
        r = self.request
        if not self.zone_hosts:
            return f"no host fits: zone {r.zone} has no hosts"
        noun = "host" if self.zone_hosts == 1 else "hosts"
        order = list(Why)
        parts = [_phrase(r, why, n, free) for why, (n, free) in
                 sorted(self.counts.items(), key=lambda kv: (-kv[1][0], order.index(kv[0])))]
        return f"no host fits: zone {r.zone} has {self.zone_hosts} {noun}: {', '.join(parts)}"


def _phrase(r: Request, why: Why, n: int, free: int) -> str:
    one = n == 1
    if why is Why.VCPUS:
        return f"{n} {'lacks' if one else 'lack'} {r.vcpus} vCPUs (largest free: {free})"
    if why is Why.RAM:
        return f"{n} {'lacks' if one else 'lack'} {r.ram_mib} MiB RAM (largest free: {free})"
    if why is Why.DISK:
        return f"{n} {'lacks' if one else 'lack'} {r.disk_mib} MiB disk (largest free: {free})"
    if why is Why.ARCH:
        return f"{n} {'does' if one else 'do'} not run {r.arch}"
    group = r.group.name if r.group is not None else ""
    if why is Why.SPREAD:
        return (f"{n} already {'holds' if one else 'hold'} an instance of spread placement "
                f"group {group}")
    if why is Why.CLUSTER:
        return f"{n} {'is' if one else 'are'} not the host of cluster placement group {group}"
    if why is Why.OTHER_DEDICATED:
        return f"{n} {'is' if one else 'are'} not dedicated host {r.dedicated_host}"
    return f"{n} {why.value}"  # dedication, disabled, down


def place(request: Request, hosts: Sequence[HostCapacity], policy: str = "spread") -> Placement:
    """The best host of `request.zone` for `request`, or why none fits."""
    weigh = WEIGHERS[policy]
    best: HostCapacity | None = None
    best_w = (0.0, 0.0)
    zone_hosts = 0
    counts: dict[Why, tuple[int, int]] = {}
    for host in hosts:
        if host.zone != request.zone:
            continue
        zone_hosts += 1
        why = rejection(request, host)
        if why is None:
            w = weigh(host)
            if best is None or w > best_w or (w == best_w and host.name < best.name):
                best, best_w = host, w
            continue
        n, free = counts.get(why.why, (0, why.free))
        counts[why.why] = (n + 1, max(free, why.free))
    if best is not None:
        return Placement(host=best, request=request, zone_hosts=zone_hosts)
    return Placement(host=None, request=request, zone_hosts=zone_hosts, counts=counts)


def largest_possible(hosts: Sequence[HostCapacity], arch: str, zone: str) -> tuple[int, int]:
    """(vcpus, ram_mib) of the biggest instance any host of the zone could ever hold."""
    sized = [h for h in hosts if h.zone == zone and arch in h.architectures]
    if not sized:
        return (0, 0)
    return (max(h.vcpus_allocatable for h in sized), max(h.ram_mib_allocatable for h in sized))
