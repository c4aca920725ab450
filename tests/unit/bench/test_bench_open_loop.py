"""The open-loop load generator: its schedule, its percentiles, and that latency is counted
from the scheduled start (coordinated omission), against a real HTTP server that stalls."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import open_loop, runner  # noqa: E402


def test_arrival_offsets_are_a_constant_rate() -> None:
    offs = open_loop.arrival_offsets(4.0, 2.0)
    assert offs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert len(open_loop.arrival_offsets(33.3, 3.0)) == 100
    assert open_loop.arrival_offsets(0.1, 1.0) == [0.0]  # at least one request
    with pytest.raises(ValueError):
        open_loop.arrival_offsets(0, 1.0)


def test_offered_rates_are_fractions_of_saturation() -> None:
    assert open_loop.offered_rates(200.0) == [50.0, 100.0, 160.0]
    assert open_loop.offered_rates(2.0) == [1.0, 1.0, 1.6]  # never below 1/s


def test_latency_counts_from_the_scheduled_start_not_the_send() -> None:
    # Four requests due every 100 ms; the server stalls until t = 1.0 and then answers all.
    # A closed-loop client would have sent one request and seen one slow answer; a user
    # arriving on schedule waits 1.0, 0.9, 0.8 and 0.7 s.
    scheduled = [0.0, 0.1, 0.2, 0.3]
    done = [1.0, 1.0, 1.0, 1.0]
    lat = open_loop.latencies_from_schedule(scheduled, done)
    assert lat == pytest.approx([1.0, 0.9, 0.8, 0.7])
    with pytest.raises(ValueError):
        open_loop.latencies_from_schedule(scheduled, done[:2])


def test_percentiles_p50_p99_p999_nearest_rank() -> None:
    lat = [i / 1000 for i in range(1, 2001)]  # 1 .. 2000 ms
    assert open_loop.latency_ms(lat) == {"p50_ms": 1000.0, "p99_ms": 1980.0,
                                         "p999_ms": 1998.0}
    # 100 samples: p99.9 is the maximum (nearest rank), not an interpolation below it
    assert open_loop.latency_ms([float(i) for i in range(1, 101)], "x_")["x_p999_ms"] == 100000
    assert open_loop.achieved_rate([0.0, 0.5, 1.0], 9.0) == 2.0
    assert open_loop.achieved_rate([0.0], 9.0) == 9.0


async def _stalling_server(delay: float) -> tuple[asyncio.Server, int]:
    """HTTP/1.1 that answers every request 202 after `delay` s (keep-alive)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if not head.startswith(b"GET /healthz"):
                    await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_the_schedule_never_waits_for_an_answer() -> None:
    async def go() -> list[open_loop.Sent]:
        server, port = await _stalling_server(1.0)
        async with server:
            start = time.perf_counter() + 0.05
            offs = open_loop.arrival_offsets(50.0, 0.2)  # 10 requests over 180 ms
            return await open_loop.fire_on_schedule(
                [f"http://127.0.0.1:{port}"], "t", start, offs, [{"i": i} for i in range(10)],
                warm=2)

    sent = asyncio.run(go())
    assert len(sent) == 10 and all(s.status == 202 for s in sent)
    # every request left before the first (1 s late) answer came back: no client waited
    assert max(s.sent for s in sent) < min(s.done for s in sent)
    assert all(s.sent >= s.scheduled for s in sent)
    lat = open_loop.latencies_from_schedule([s.scheduled for s in sent],
                                            [s.done for s in sent])
    assert min(lat) >= 1.0


def test_table_shows_open_loop_rows_and_the_promise() -> None:
    ph = {"offered_per_s": 50.0, "fraction_of_saturation": 0.5, "requests": 400,
          "p50_ms": 12.0, "p99_ms": 61.0, "p999_ms": 90.0, "running_p50_ms": 40.0,
          "running_p99_ms": 120.0, "errors": 0}
    low = dict(ph, fraction_of_saturation=0.25, p99_ms=20.0)
    table = runner.render_table({"control_plane": {"sqlite": {"open_loop": [low, ph]},
                                                   "postgresql": {"open_loop": [ph]}}})
    rows = [line for line in table.splitlines() if line.startswith("| sqlite")]
    assert len(rows) == 2
    assert rows[0].endswith("|  |") and "<= 50: MISSED" in rows[1]
    pg = [line for line in table.splitlines() if line.startswith("| postgresql")]
    assert pg and "MISSED" not in pg[0]  # the promise is SQLite's only
