"""The DNS records of the networks this host serves, kept current from the API's deltas.

The API sends a network's full record list once, then only what changed since the version the
host claims to hold (see cumulo.services.dns_journal). The book merges those deltas and hands
the reconciler complete lists, so nothing downstream knows about deltas.
"""

from __future__ import annotations

import bisect
import socket
from dataclasses import dataclass

import structlog

from cumulo.protocol import Assignments, DnsRecord, NetworkRef

log = structlog.get_logger("cumulo.agent")

# = cumulo.services.agent_networks.MAX_DNS_CLAIMS (the agent does not import services)
MAX_CLAIMS = 100
# A delta of more than 1/SORT_AGAIN_SHARE of a network's records is merged by sorting them
# all again. Patching costs ~log2(n) key computations and an O(n) insert per record: with 100
# hosts that each take the DNS changes of ~3 s of creates at once, patching was a tenth of a
# simulated host's CPU in the control-plane benchmark.
SORT_AGAIN_SHARE = 16


@dataclass
class _Held:
    epoch: str
    version: int
    records: dict[str, DnsRecord]  # by MAC
    _sorted: list[DnsRecord] | None = None  # records in address order

    def in_order(self) -> list[DnsRecord]:
        # Every answer of the long-poll passes here; most bring no change to a network.
        if self._sorted is None:
            self._sorted = sorted(self.records.values(), key=_order)
        return self._sorted

    def change(self, added: list[DnsRecord], removed: list[str]) -> None:
        """Apply a delta. A small delta is patched into the ordered list (a busy network's
        deltas are often a few records among thousands); a large one sorts it again, which
        is cheaper than a bisect and a list insert per record. Patched in a copy: lists
        handed out before stay as they were (the reconciler compares the old list with the
        new)."""
        if not added and not removed:
            return
        patch = (len(added) + len(removed)) * SORT_AGAIN_SHARE < len(self.records)
        ordered = None if self._sorted is None or not patch else list(self._sorted)

        def drop(mac: str) -> None:
            old = self.records.pop(mac, None)
            if old is not None and ordered is not None:
                ordered.pop(bisect.bisect_left(ordered, _order(old), key=_order))

        for mac in removed:
            drop(mac)
        for r in added:
            drop(r.mac)  # an upsert by MAC (the address may have changed)
            self.records[r.mac] = r
            if ordered is not None:
                bisect.insort(ordered, r, key=_order)
        self._sorted = ordered


class DnsBook:
    def __init__(self) -> None:
        self._nets: dict[str, _Held] = {}

    def claims(self) -> list[str]:
        """What this host holds, as the `dns` parameter of the next assignments call (the API
        reads at most MAX_CLAIMS: the others' networks come as full lists)."""
        held = sorted(self._nets.items())[:MAX_CLAIMS]
        return [f"{n}:{h.epoch}:{h.version}" for n, h in held]

    def forget(self) -> None:
        self._nets.clear()

    def apply(self, batch: Assignments) -> Assignments:
        """The batch with every network's complete record list."""
        nets = [self._merge(n) for n in batch.networks]
        served = {n.id for n in nets}
        for gone in set(self._nets) - served:
            del self._nets[gone]
        return batch.model_copy(update={"networks": nets})

    def _merge(self, n: NetworkRef) -> NetworkRef:
        held = self._nets.get(n.id)
        if n.records_since is None:
            held = _Held(n.records_epoch, n.records_version, {r.mac: r for r in n.records})
        elif held is None or (held.epoch, held.version) != (n.records_epoch, n.records_since):
            # A delta from another base than ours (cannot happen with one poll in flight):
            # keep what we have, and claim nothing so that the next answer is a full list.
            log.warning("dns_delta_mismatch", network=n.id)
            self._nets.pop(n.id, None)
            return _complete(n, held.in_order() if held else n.records)
        else:
            held.change(n.records, n.records_removed)
            held.version = n.records_version
        if n.records_epoch:  # an API that journals; otherwise nothing to claim
            self._nets[n.id] = held
        return _complete(n, held.in_order())


def _complete(n: NetworkRef, records: list[DnsRecord]) -> NetworkRef:
    return n.model_copy(update={"records": records, "records_since": None,
                                "records_removed": []})


def _order(r: DnsRecord) -> tuple[bytes, str]:
    # inet_aton, not ipaddress: a busy network's list is sorted again on every change, and
    # parsing its addresses with ipaddress was nearly half of a simulated host's CPU.
    try:
        return socket.inet_aton(r.ip), r.mac
    except OSError:
        return b"", r.mac
