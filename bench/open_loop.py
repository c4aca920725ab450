"""Open-loop latency: creates sent on a fixed schedule, each timed from its scheduled start.

A closed loop (C clients that each wait for their answer) measures throughput twice: its mean
latency is C / throughput (Little's law), and while the server stalls the clients send nothing,
so the stall is seen once instead of by every request that a real user would have sent during
it (coordinated omission). Here, as wrk2 or k6's constant-arrival-rate do, the i-th create is
due at `i / rate` seconds after the start, is sent then on a connection of its own if none is
free (the pool is unbounded, so the schedule never waits for an answer), and its latency is
`answered - scheduled`: if the bench itself sends late, that lateness counts against cumulo,
never in its favour (`max_send_lag_ms` says how late the generator was).

Time to running: from the scheduled start to the moment the probe (a thread polling the
database every 20 ms, never the API) first sees the instance `running`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench import loop_watch
from bench.cloud import percentile

FRACTIONS = (0.25, 0.5, 0.8)  # of the saturation rate measured in the same run
PROBE_STEP_S = 0.02


# --- pure (unit-tested) ---------------------------------------------------------------------

def arrival_offsets(rate_per_s: float, duration_s: float) -> list[float]:
    """Constant arrival rate: the scheduled send times (seconds after the start) of the
    requests of a `duration_s` window, `1 / rate` apart; at least one."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    n = max(1, round(rate_per_s * duration_s))
    return [i / rate_per_s for i in range(n)]


def latencies_from_schedule(scheduled: Sequence[float], done: Sequence[float]) -> list[float]:
    """Latency of each request from its *scheduled* start (coordinated-omission corrected)."""
    if len(scheduled) != len(done):
        raise ValueError("one completion time per scheduled request")
    return [d - s for s, d in zip(scheduled, done, strict=True)]


def latency_ms(values: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50 / p99 / p99.9 (nearest rank) of latencies in seconds, in ms."""
    return {
        f"{prefix}p50_ms": round(percentile(values, 50) * 1000, 2),
        f"{prefix}p99_ms": round(percentile(values, 99) * 1000, 2),
        f"{prefix}p999_ms": round(percentile(values, 99.9) * 1000, 2),
    }


def achieved_rate(sent: Sequence[float], offered: float) -> float:
    """The rate the generator really sent at: (n - 1) gaps over the first-to-last span."""
    span = max(sent) - min(sent) if sent else 0.0
    return round((len(sent) - 1) / span, 1) if len(sent) > 1 and span > 0 else offered


def offered_rates(saturation_per_s: float, fractions: Sequence[float] = FRACTIONS
                  ) -> list[float]:
    """The offered rates of the phases (at least 1/s each)."""
    return [max(1.0, round(saturation_per_s * f, 1)) for f in fractions]


# --- the load generator ---------------------------------------------------------------------

@dataclass
class Sent:
    scheduled: float  # perf_counter when it was due
    sent: float  # when the generator really sent it
    done: float  # when its answer arrived
    status: int
    error: str = ""


async def fire_on_schedule(bases: Sequence[str], token: str, start_at: float,
                           offsets: Sequence[float], bodies: Sequence[dict[str, Any]],
                           warm: int = 32) -> list[Sent]:
    """POST /v1/instances with `bodies[i]` at `start_at + offsets[i]` (perf_counter), to API
    `i mod len(bases)`."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    results: list[Sent | None] = [None] * len(offsets)
    clients = [httpx.AsyncClient(base_url=b, timeout=120.0, limits=limits,
                                 headers={"Authorization": f"Bearer {token}"}) for b in bases]
    watch = loop_watch.start("client")
    try:
        # Open some connections before the clock, as a busy client would have them.
        await asyncio.gather(*(c.get("/healthz") for c in clients for _ in range(warm)))

        async def one(i: int, due: float) -> None:
            sent = time.perf_counter()
            try:
                r = await clients[i % len(clients)].post("/v1/instances", json=bodies[i])
                status, err = r.status_code, "" if r.status_code == 202 else r.text[:200]
            except httpx.HTTPError as e:
                status, err = 0, f"{type(e).__name__}: {e}"
            results[i] = Sent(due, sent, time.perf_counter(), status, err)

        tasks = []
        for i, off in enumerate(offsets):
            due = start_at + off
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
        if watch is not None:
            watch.cancel()
    return [r for r in results if r is not None]


class RunningProbe:
    """A thread that records when each instance is first seen running (perf_counter)."""

    def __init__(self, running_names: Callable[[], set[str]]) -> None:
        self._names = running_names
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RunningProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for n in self._names():
                self.seen.setdefault(n, now)
            self._stop.wait(PROBE_STEP_S)

    def wait_for(self, names: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(n not in self.seen for n in names):
            if time.monotonic() > deadline:
                missing = sum(1 for n in names if n not in self.seen)
                raise TimeoutError(f"{missing} instances not running after {timeout:.0f} s")
            time.sleep(PROBE_STEP_S)


def phase(bases: Sequence[str], token: str, rate: float, duration_s: float, prefix: str,
          body: Callable[[str], dict[str, Any]], running_names: Callable[[], set[str]],
          timeout_s: float) -> tuple[dict[str, Any], list[str]]:
    """One offered rate: send on schedule, wait until every created instance runs.
    Returns (the phase's figures, the names created, for the caller to delete)."""
    offsets = arrival_offsets(rate, duration_s)
    names = [f"{prefix}-{i:05d}" for i in range(len(offsets))]
    with RunningProbe(running_names) as probe:
        start = time.perf_counter() + 0.2
        sent = asyncio.run(fire_on_schedule(bases, token, start, offsets,
                                            [body(n) for n in names]))
        ok = [n for n, s in zip(names, sent, strict=True) if s.status == 202]
        probe.wait_for(ok, timeout_s)
    lat = latencies_from_schedule([s.scheduled for s in sent], [s.done for s in sent])
    due = {n: s.scheduled for n, s in zip(names, sent, strict=True)}
    running = [probe.seen[n] - due[n] for n in ok]
    errors = [f"{s.status} {s.error}" for s in sent if s.status != 202]
    out: dict[str, Any] = {
        "offered_per_s": rate,
        **latency_ms(lat),
        "max_ms": round(max(lat) * 1000, 2),
        **(latency_ms(running, "running_") if running else {}),
        "requests": len(sent),
        "errors": len(errors),
        "first_errors": errors[:3],
        "achieved_per_s": achieved_rate([s.sent for s in sent], rate),
        "max_send_lag_ms": round(max(s.sent - s.scheduled for s in sent) * 1000, 2),
        "window_s": duration_s,
    }
    return out, ok


def run_phases(bases: Sequence[str], token: str, saturation_per_s: float, duration_s: float,
               body: Callable[[str], dict[str, Any]], running_names: Callable[[], set[str]],
               delete_all: Callable[[list[str]], None], timeout_s: float) -> list[dict[str, Any]]:
    """25 / 50 / 80 % of the saturation rate, one after the other; each phase's instances are
    deleted before the next starts, so every phase meets the same, empty cloud."""
    out = []
    for i, rate in enumerate(offered_rates(saturation_per_s)):
        figures, names = phase(bases, token, rate, duration_s, f"ol{i}", body, running_names,
                               timeout_s)
        figures["fraction_of_saturation"] = FRACTIONS[i]
        out.append(figures)
        delete_all(names)
    return out
