"""bench.cp_cpu at its smallest: every step runs through the real services and the instances
really go (shapes and counts, never timing thresholds)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import cp_cpu  # noqa: E402


def test_steps_and_placement_measure_every_step() -> None:
    out = cp_cpu.run(10, (2, 3))
    steps = out["steps_cpu_ms_per_instance"]
    assert set(steps) == {"create", "report_running", "assignments", "delete",
                          "report_deleted"}
    assert all(v > 0 for v in steps.values())
    assert set(out["placement"]) == {"2", "3"}
    assert all(p["create_cpu_ms"] > 0 and p["capacities_cpu_ms"] > 0
               for p in out["placement"].values())
