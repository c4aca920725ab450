"""Which bare-metal node a bm1.* instance gets: the pure rule, and the refusal that says why
none fits (as the VM scheduler's explanation does).

A node fits when it is `available`, in the zone, of the architecture, and has at least the
type's vCPUs, RAM and disk. Of those that fit, the smallest is taken (fewest vCPUs, then
RAM, then disk, then name): a big server is kept for a type that needs it, as Ironic's
resource classes keep a server for its class, and the choice is the same on every call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cumulo.domain.baremetal import NodeState


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    state: str
    arch: str
    vcpus: int
    ram_mib: int
    disk_gib: int


@dataclass(frozen=True)
class Want:
    type_name: str
    zone: str
    arch: str
    vcpus: int
    ram_mib: int
    disk_gib: int


def _too_small(c: Candidate, w: Want) -> bool:
    return c.vcpus < w.vcpus or c.ram_mib < w.ram_mib or c.disk_gib < w.disk_gib


def pick(nodes: list[Candidate], want: Want) -> Candidate | None:
    """The node `want` gets among the zone's `nodes`, or None when none fits."""
    fits = [c for c in nodes if c.state == NodeState.AVAILABLE.value and c.arch == want.arch
            and not _too_small(c, want)]
    return min(fits, key=lambda c: (c.vcpus, c.ram_mib, c.disk_gib, c.name), default=None)


def explain(nodes: list[Candidate], want: Want) -> str:
    """Why no node of the zone fits `want`, counted by reason (no node names: users see
    none), e.g. "no bare-metal node in zone z fits bm1.tiny (1 vCPUs, 256 MiB, 1 GiB disk,
    x86_64): 3 nodes: 1 deploying, 1 arm64, 1 too small"."""
    head = (f"no bare-metal node in zone {want.zone} fits {want.type_name} ({want.vcpus} "
            f"vCPUs, {want.ram_mib} MiB, {want.disk_gib} GiB disk, {want.arch})")
    if not nodes:
        return head + ": the zone has no bare-metal node"
    why: Counter[str] = Counter()
    for c in nodes:
        if c.state != NodeState.AVAILABLE.value:
            why[c.state] += 1
        elif c.arch != want.arch:
            why[c.arch] += 1
        elif _too_small(c, want):
            why["too small"] += 1
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{head}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}: {reasons}"
