"""The control-plane benchmark's HTTP side: closed-loop clients, health, the API's own count.

With several API processes (one PostgreSQL database) the load is spread round-robin: client i
talks to API i mod n (and, in measure, host i registers with API i mod n).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress

import httpx

from bench.cloud import percentile

TYPE = "t1.nano"
ZONE = "local-1a"


def create_body(name: str) -> dict[str, object]:
    return {"name": name, "image": "tiny", "type": TYPE, "zone": ZONE}


async def fire(bases: Sequence[str], token: str, clients: int, jobs: list[tuple[str, str]]
               ) -> tuple[list[float], list[str], float]:
    """Run (method, name) jobs over `clients` concurrent connections, each waiting for its
    answer (closed loop). Returns (latencies in s, error descriptions, perf_counter at the
    first request)."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    lat: list[float] = []
    errors: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                method, name = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            if method == "POST":
                r = await client.post("/v1/instances", json=create_body(name))
            else:
                r = await client.delete(f"/v1/instances/{name}")
            lat.append(time.perf_counter() - t)
            if r.status_code != 202:
                errors.append(f"{method} {name}: {r.status_code} {r.text[:200]}")

    # Before the clock: making a client costs the bench ~20 ms of CPU (its TLS context), and
    # the clients' connections are open, as a user's SDK keeps its own.
    conns = [httpx.AsyncClient(base_url=bases[i % len(bases)], timeout=60.0,
                               headers={"Authorization": f"Bearer {token}"})
             for i in range(clients)]
    try:
        await asyncio.gather(*(c.get("/healthz") for c in conns))
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    return lat, errors, start


def stats(prefix: str, lat: list[float]) -> dict[str, float]:
    return {
        f"{prefix}p50_ms": round(percentile(lat, 50) * 1000, 2),
        f"{prefix}p99_ms": round(percentile(lat, 99) * 1000, 2),
        f"{prefix}max_ms": round(max(lat) * 1000, 2),
    }


def healthy(base: str) -> bool:
    with suppress(httpx.HTTPError):
        return httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200
    return False


def shown_running(base: str, token: str) -> int:
    """How many instances the API itself lists as running (after the clock stopped)."""
    r = httpx.get(f"{base}/v1/instances", headers={"Authorization": f"Bearer {token}"},
                  timeout=120.0)
    r.raise_for_status()
    return sum(1 for i in r.json() if i["state"] == "running")
