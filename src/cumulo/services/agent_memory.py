"""What one API process remembers between agents' long-polls, in one object per process
(`Notifier.agents`): the hosts' recent assignment views, each network's DNS records as last
read, and the facts of networks (which never change). Nothing here is the truth: each is
rebuilt from the database when missing or outdated (see agent_views and agent_networks).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from cumulo.protocol import Assignment, DnsRecord, SnapshotAssignment, VolumeAssignment

# Network facts kept at most: emptied when the process has read more than this many.
MAX_NETWORK_FACTS = 100_000


@dataclass(frozen=True)
class HostView:
    """What a host is assigned, but its networks' DNS records (those are per claim)."""

    name: str  # EPOCH:SERIAL, unique per build: what the host claims back (`have`)
    content: int  # the host's content version (Notifier.content) read before the build
    rebuild_at: float  # time.monotonic() after which the next answer rebuilds it whole
    instances: list[Assignment]
    network_ids: frozenset[str]
    volumes: list[VolumeAssignment]
    snapshots: list[SnapshotAssignment]


@dataclass(frozen=True)
class NetworkFacts:
    id: str
    project: str
    zone: str
    cidr: str
    gateway: str
    vni: int


class AgentMemory:
    """One API process's memory of the agent protocol. Views' serials are comparable within
    the process only, hence the epoch. Each part has its own lock: a long-poll answer takes
    them one after the other, never two at once."""

    def __init__(self) -> None:
        self.views_lock = threading.Lock()
        self.epoch = secrets.token_hex(4)
        self.serial = 0
        self.views: dict[str, list[HostView]] = {}  # host id -> recent views, newest last
        self.records_lock = threading.Lock()
        # network id -> (the DNS journal version it was read at, its records)
        self.records: dict[str, tuple[int, list[DnsRecord]]] = {}
        self.facts_lock = threading.Lock()
        self.facts: dict[str, NetworkFacts] = {}

    def next_view_name(self) -> str:
        """Under views_lock."""
        self.serial += 1
        return f"{self.epoch}:{self.serial}"
