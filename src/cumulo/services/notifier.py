"""Wakes agents that long-poll for their assignments when something for their host changes.

Services run in worker threads; waiters are asyncio tasks of the API's event loop. Versions
are per host and only ever grow within one API process; an agent compares for inequality,
so an API restart (versions back to 0) still wakes it correctly.

Two counters per host: `version` moves whenever the host must fetch again (its long-poll
answers), `content` only when what the API would assign it changed (its instances, volumes,
snapshots, rules, addresses: every service that writes them calls `notify` or `touch`). A
DNS-only wake-up moves the first, not the second: the API answers it from the host's cached
assignments (see services.agents). A writer that names the instances it changed lets the API
rebuild only those in the cached assignments (`changes`).
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from cumulo.protocol import DnsRecord
from cumulo.services.agent_memory import AgentMemory
from cumulo.services.dns_journal import DnsJournal
from cumulo.services.pending_beats import PendingBeats

# DNS-only changes (another host's instance joined or left a network) wake a host at most
# this often: a burst of creates then costs each host one fetch per period, not one per create.
DNS_COALESCE_S = 3.0
# A host is woken at a random moment between this share of the period and its end, after the
# first change it has not fetched. Hosts that share a network would otherwise be woken all at
# once: in the control-plane benchmark, 100 long-poll answers in one burst every 3 s, with every
# create of that moment queued behind them. Wake-ups due within DNS_WAKE_GRAIN_S go together.
DNS_SPREAD_FROM = 0.5
DNS_WAKE_GRAIN_S = 0.05
# A change the other hosts must follow sooner than the coalescing period allows (a host new to
# a network is a new VXLAN flood destination for the hosts serving it) is asked for with a
# shorter `within`: each host is woken at a random moment of that window, not all together,
# and once for every change of the window. Waking them all at once answered every host of the
# network in one turn of the API's event loop: in the control-plane benchmark, each create on a
# host new to the network (most of them, in a network that grows) queued up to 100 long-poll
# answers (~2 ms each) in front of every request of that moment (docs/benchmarks.md, the
# open-loop stall).
# Either window is stretched for a change that wakes many hosts, so that such wake-ups cost
# the API at most about WAKES_PER_S long-poll answers a second: a network on 1,000 hosts was
# woken whole within 0.5-3 s at every create or delete, up to 2,000 answers a second asked of
# an API that also answers the hosts' own polls (250 a second at 1,000 hosts; docs/
# benchmarks.md, Findings, "Hosts marked down at 1,000 hosts"). Past LONG_POLL_MAX most hosts
# get the change first in their next periodic answer, which drops their wake-up
# (`answering`). 200: a network of up to 100 hosts keeps the windows above.
WAKES_PER_S = 200.0
# Content changes remembered per host, with the instances each one touched. A cached view older
# than that many changes is rebuilt whole.
CHANGE_LOG = 64

# The notifier's key of the edge (cumulo.edge), beside the hosts' ids: it is woken at every
# content change of any host (what a host is assigned holds every fact of the edge's table).
EDGE = "edge"

# One content change: its version, and the instances it touched (None: anything else too).
_Change = tuple[int, frozenset[str] | None]


class Notifier:
    def __init__(self, coalesce_s: float = DNS_COALESCE_S) -> None:
        self._lock = threading.Lock()
        self.coalesce_s = coalesce_s
        self._soon: dict[str, float] = {}  # host id -> when to wake it (time.monotonic())
        self._timer: threading.Timer | None = None
        self._timer_at = 0.0  # when it fires
        self._timers = 0  # timers armed so far: a cancelled one that fired anyway is stale
        self.dns = DnsJournal()
        # Per-process memory of the agent protocol, kept here because every part of the API
        # shares this object: host name -> id (ids never change once made), and host id ->
        # when this process last wrote its heartbeat (time.monotonic()).
        self.host_ids: dict[str, str] = {}
        self.heartbeats: dict[str, float] = {}
        # Host name -> (id, HMAC key of the token its last answered long-poll carried, when):
        # whose UDP beats this process can verify (api/beat_listener.py), without a read.
        self.beat_keys: dict[str, tuple[str, bytes, float]] = {}
        self.pending_beats = PendingBeats()  # beats the API's flusher writes together
        self.agents = AgentMemory()  # the hosts' recent views, DNS records, network facts
        self._versions: dict[str, int] = defaultdict(int)
        self._content: dict[str, int] = defaultdict(int)
        self._changes: dict[str, deque[_Change]] = defaultdict(lambda: deque(maxlen=CHANGE_LOG))
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
            defaultdict(list)
        )
        self._closed = False
        self._publish: Callable[[dict[str, Any]], None] | None = None

    def version(self, host_id: str) -> int:
        with self._lock:
            return self._versions[host_id]

    def content(self, host_id: str) -> int:
        with self._lock:
            return self._content[host_id]

    def changes(self, host_id: str, since: int) -> tuple[int, set[str] | None]:
        """(the host's content version, the instances changed after content version `since`).
        None instead of instances when something else changed too, or the log no longer
        reaches back that far."""
        with self._lock:
            current = self._content[host_id]
            log = self._changes.get(host_id)
            if current == since:
                return current, set()
            if since > current or not log or log[0][0] > since + 1:
                return current, None
            touched: set[str] = set()
            for version, instances in log:
                if version <= since:
                    continue
                if instances is None:
                    return current, None
                touched |= instances
            return current, touched

    def touch(self, host_id: str, instances: Iterable[str] | None = None) -> None:
        """What the host is assigned changed, but it need not fetch it now. `instances`: the
        only ones whose assignment changed (None: anything may have)."""
        instances = None if instances is None else list(instances)
        with self._lock:
            self._bump(host_id, instances)
        self._share({"k": "t", "h": host_id, "i": instances})

    def notify(self, host_id: str | None, instances: Iterable[str] | None = None) -> None:
        """What the host is assigned changed: wake it. `instances` as for `touch`."""
        instances = None if instances is None else list(instances)
        self._wake(host_id, content=True, instances=instances)
        if host_id is not None:
            self._share({"k": "n", "h": host_id, "i": instances})

    # --- several API processes (see pg_bus) ---------------------------------------------

    def share_with(self, publish: Callable[[dict[str, Any]], None]) -> None:
        """Publish from now on what this notifier is told, for the other API processes."""
        self._publish = publish

    def _share(self, message: dict[str, Any]) -> None:
        if self._publish is not None:
            self._publish(message)

    def deliver(self, message: dict[str, Any]) -> None:
        """What another API process's notifier was told, applied here without publishing."""
        kind = message.get("k")
        instances = message.get("i")
        if kind == "n":
            self._wake(str(message["h"]), content=True, instances=instances)
        elif kind == "t":
            with self._lock:
                self._bump(str(message["h"]), instances)
        elif kind == "s":
            self._notify_soon(message["h"])
        elif kind == "d":
            within = message.get("w", 0.0 if message.get("p") else None)  # "p": older API
            self._dns_changed(str(message["n"]),
                              [DnsRecord.model_validate(r) for r in message["a"]],
                              [str(m) for m in message["r"]], message.get("skip"),
                              None if within is None else float(within))
        elif kind == "all":  # messages may have been lost: everything is fetched again
            self.dns.forget_history()
            with self._lock:
                hosts = set(self._versions) | set(self._waiters)
            for h in hosts:
                self._wake(h, content=True)

    def _bump(self, host_id: str, instances: Iterable[str] | None) -> None:
        """Under the lock: a content change."""
        self._content[host_id] += 1
        self._changes[host_id].append(
            (self._content[host_id], None if instances is None else frozenset(instances)))
        if host_id != EDGE:
            self._versions[EDGE] += 1
            for loop, event in self._waiters.pop(EDGE, []):
                loop.call_soon_threadsafe(event.set)

    def _wake(self, host_id: str | None, content: bool,
              instances: Iterable[str] | None = None) -> None:
        if host_id is None:
            return
        with self._lock:
            self._versions[host_id] += 1
            if content:
                self._bump(host_id, instances)
            waiters = self._waiters.pop(host_id, [])
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def notify_soon(self, host_ids: Iterable[str | None]) -> None:
        """Wake these hosts within `coalesce_s` (DNS changes: not about their own assignments,
        whose content version stays)."""
        hosts = [h for h in host_ids if h]
        self._notify_soon(hosts)
        self._share({"k": "s", "h": hosts})

    def _notify_soon(self, host_ids: Iterable[str | None], within: float | None = None) -> None:
        """Wake these hosts within `within` s (None: within the coalescing period, from
        DNS_SPREAD_FROM of it on), or within a longer window when they are many (see
        WAKES_PER_S), also from DNS_SPREAD_FROM of it on. A host already due by then is woken
        once, when due."""
        hosts = [h for h in host_ids if h]
        base = self.coalesce_s if within is None else within
        window = max(base, len(hosts) / WAKES_PER_S)
        spread_from = DNS_SPREAD_FROM if within is None or window > within else 0.0
        now = time.monotonic()
        with self._lock:
            for h in hosts:
                due = self._soon.get(h)
                if due is None or (within is not None and due > now + window):
                    self._soon[h] = now + window * random.uniform(spread_from, 1.0)
            self._arm(now)

    def answering(self, host_id: str) -> None:
        """The host is being answered, with every DNS change journaled so far (call it before
        reading the journal): a wake-up still due for it would only make it ask again for
        nothing new. A change journaled after this call schedules its own wake-up."""
        with self._lock:
            self._soon.pop(host_id, None)

    def _arm(self, now: float) -> None:
        """Under the lock: a timer for the earliest wake-up (the one running is replaced when a
        wake-up is due before it)."""
        if not self._soon:
            return
        first = min(self._soon.values())
        if self._timer is not None:
            if first >= self._timer_at:
                return
            self._timer.cancel()
        self._timers += 1
        self._timer_at = first
        self._timer = threading.Timer(max(0.0, first - now),
                                      functools.partial(self._flush, self._timers))
        self._timer.daemon = True
        self._timer.start()

    def _flush(self, timer: int) -> None:
        now = time.monotonic()
        with self._lock:
            due = [h for h, at in self._soon.items() if at <= now + DNS_WAKE_GRAIN_S]
            for h in due:
                del self._soon[h]
            if timer == self._timers:  # not one cancelled as it fired: the next is armed
                self._timer = None
                self._arm(now)
        for h in due:
            self._wake(h, content=False)

    def dns_changed(self, network_id: str, added: Iterable[DnsRecord] = (),
                    removed: Iterable[str] = (), skip: str | None = None,
                    within: float | None = None) -> None:
        """Records of a network were added or removed (MACs; call after the commit): journal
        them and wake every host serving that network but `skip`, within the coalescing
        period, or within `within` s when given (0: now; a change of where a NIC runs: the
        hosts' VXLAN entries must follow within 1 s)."""
        added, removed = list(added), list(removed)
        self._dns_changed(network_id, added, removed, skip, within)
        self._share({"k": "d", "n": network_id, "a": [r.model_dump() for r in added],
                     "r": removed, "skip": skip, "w": within})

    def _dns_changed(self, network_id: str, added: list[DnsRecord], removed: list[str],
                     skip: str | None, within: float | None = None) -> None:
        self.dns.changed(network_id, added, removed)
        hosts = [h for h in self.dns.subscribers([network_id]) if h != skip]
        if within is None or within > 0:
            self._notify_soon(hosts, within)
            return
        for h in hosts:
            self._wake(h, content=False)

    def close(self) -> None:
        """The API is stopping: every waiting host is answered now, and no wait waits any
        more (see cumulo.api.server)."""
        with self._lock:
            self._closed = True
            waiters = [w for ws in self._waiters.values() for w in ws]
            self._waiters.clear()
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, host_id: str, since: int, timeout: float) -> int:
        """Return the host's version once it differs from `since`, or after `timeout`."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            current = self._versions[host_id]
            if current != since or self._closed:
                return current
            self._waiters[host_id].append((loop, event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:  # timed out or cancelled (its client left): not woken, still listed
            with self._lock:
                waiters = self._waiters.get(host_id, [])
                if (loop, event) in waiters:
                    waiters.remove((loop, event))
        return self.version(host_id)
