"""The migration bench's pure pieces: the client's stamped stream read back (its longest gap,
a counter that skips or restarts), and its rows and notes in the table."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import migration, runner  # noqa: E402


def test_the_longest_gap_and_an_intact_counter() -> None:
    text = "5 100.00\n6 100.05\n7 100.40\n8 100.45\nnc: garbage\n"
    assert migration.stream_gaps(text) == (350.0, True)


def test_a_counter_that_skips_or_restarts_is_broken() -> None:
    assert migration.stream_gaps("1 1.00\n2 1.05\n4 1.10\n")[1] is False
    assert migration.stream_gaps("7 1.00\n8 1.05\n0 1.10\n")[1] is False
    assert migration.stream_gaps("") == (0.0, False)


def test_the_table_shows_each_architectures_numbers_and_the_promise() -> None:
    result = {"migration": {
        "n": 2, "stream": "private", "load_1m_before": 9.0, "load_1m_after": 10.0,
        "x86_64": {"migrations": 2, "completed": 2, "downtimes_ms": [90.0, 120.0],
                   "downtime_ms_p50": 90.0, "downtime_ms_max": 120.0, "total_s_p50": 1.5,
                   "stream_gap_ms_max": 400.0, "stream_broken": False, "failed_reasons": []},
        "dirty_memory": {"state": "completed", "wall_s": 30.0, "passes": 12,
                         "dirty_pages_rate": 9000, "downtime_ms": 250, "reason": ""}}}
    table = runner.render_table(result)
    assert "| migration x86_64: QEMU downtime p50 | 90 ms | <= 100: met |" in table
    assert "| migration arm64: QEMU downtime p50 | not measured | <= 100 |" in table
    assert "| migration x86_64: longest gap in a streamed counter | 400 ms |  |" in table
    assert "x86_64: 2 of 2 completed, downtimes [90.0, 120.0] ms, counter intact." in table
    assert "A guest rewriting 64 MiB in a loop: completed after 30.0 s (12 passes" in table
