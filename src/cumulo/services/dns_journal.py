"""Per network, the DNS record changes this API process has committed, so a host that already
holds a network's records receives only what changed since.

Every host serving a network runs a dnsmasq that must know every instance of that network,
wherever it runs. Sending each host the whole list at every change cost O(instances) per host
per change: with 100 hosts and 2,000 instances on one network, creating them moved hundreds of
millions of records. A host instead says which version of each network's records it holds
(epoch:version) and gets the additions and removals since; a host with nothing, an old epoch
(the API restarted) or a version older than the journal keeps gets the full list from the
database.

Records are keyed by MAC: every address row gets a fresh random MAC, so entries of different
instances commute even when two threads append them in another order than they committed (an
address freed by one and taken by the other). Changes are appended after their commit, and a
full list is read after reading the version it is labelled with, so a host may receive a
change twice (harmless: an upsert or a removal of what is gone) but never miss one.
"""

from __future__ import annotations

import bisect
import secrets
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from cumulo.protocol import DnsRecord

KEEP = 8192  # changes kept per network; a host further behind gets the full list


@dataclass
class _Log:
    versions: list[int] = field(default_factory=list)
    changes: list[tuple[str, DnsRecord | None]] = field(default_factory=list)  # (mac, record)


@dataclass(frozen=True)
class Delta:
    version: int
    added: list[DnsRecord]  # new or changed records
    removed: list[str]  # MACs


class DnsJournal:
    def __init__(self, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.epoch = secrets.token_hex(4)  # versions are only comparable within one process
        self.keep = keep
        self._lock = threading.Lock()
        self._version: dict[str, int] = defaultdict(int)
        self._logs: dict[str, _Log] = defaultdict(_Log)
        self._subscribers: dict[str, set[str]] = defaultdict(set)  # network -> hosts
        self._subscribed: dict[str, set[str]] = {}  # host -> networks

    def forget_history(self) -> None:
        """Changes may have been missed (another API process's, see pg_bus): a new epoch, so
        that every host fetches full lists again. Who serves what is kept."""
        with self._lock:
            self.epoch = secrets.token_hex(4)
            self._version.clear()
            self._logs.clear()

    def version(self, network_id: str) -> int:
        with self._lock:
            return self._version[network_id]

    def changed(self, network_id: str, added: Iterable[DnsRecord] = (),
                removed: Iterable[str] = ()) -> None:
        """Append committed changes (call after the commit)."""
        with self._lock:
            log = self._logs[network_id]
            v = self._version[network_id]
            for mac in removed:
                v += 1
                log.versions.append(v)
                log.changes.append((mac, None))
            for rec in added:
                v += 1
                log.versions.append(v)
                log.changes.append((rec.mac, rec))
            self._version[network_id] = v
            if len(log.versions) > 2 * self.keep:
                del log.versions[: -self.keep], log.changes[: -self.keep]

    def since(self, network_id: str, epoch: str, version: int) -> Delta | None:
        """The changes after `version`, or None when only a full list can bring a host there."""
        with self._lock:
            current = self._version[network_id]
            if epoch != self.epoch or version > current:
                return None
            if version == current:
                return Delta(current, [], [])
            log = self._logs[network_id]
            if not log.versions or log.versions[0] > version + 1:
                return None  # trimmed away
            added: dict[str, DnsRecord] = {}
            removed: set[str] = set()
            for mac, rec in log.changes[bisect.bisect_right(log.versions, version):]:
                if rec is None:
                    added.pop(mac, None)
                    removed.add(mac)
                else:
                    removed.discard(mac)
                    added[mac] = rec
            return Delta(current, list(added.values()), sorted(removed))

    def subscribe(self, host_id: str, network_ids: Iterable[str]) -> None:
        """`host_id` serves exactly these networks now (from its latest assignments)."""
        nets = set(network_ids)
        with self._lock:
            old = self._subscribed.get(host_id, set())
            for n in old - nets:
                self._subscribers[n].discard(host_id)
            for n in nets - old:
                self._subscribers[n].add(host_id)
            self._subscribed[host_id] = nets

    def subscribers(self, network_ids: Iterable[str]) -> set[str]:
        """Hosts that were last sent these networks: their dnsmasq must learn the change."""
        with self._lock:
            return set().union(*(self._subscribers.get(n, set()) for n in network_ids))
