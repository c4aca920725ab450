"""A tiny control-plane run: the real API, agents and clients in their processes, proving the
measuring code measures (counts and shapes, never timing thresholds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import control_plane, open_loop  # noqa: E402
from tests.conftest import _pg_database  # noqa: E402


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert control_plane.percentile(values, 50) == 50.0
    assert control_plane.percentile(values, 99) == 99.0
    assert control_plane.percentile([7.0], 99) == 7.0


def _measure_on_postgresql(sc: control_plane.Scale, work: Path) -> dict[str, object]:
    """One measure() on a fresh PostgreSQL database of the test cluster, dropped after."""
    gen = _pg_database()
    url = next(gen)
    try:
        return control_plane.measure(url, sc, work)
    finally:
        next(gen, None)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tiny_run_creates_runs_and_deletes_everything(backend: str, tmp_path: Path) -> None:
    sc = control_plane.Scale(instances=20, hosts=3, clients=4, timeout_s=120, open_loop_s=0.5)
    if backend == "sqlite":
        result = control_plane.measure(f"sqlite:///{tmp_path / 'b.db'}", sc, tmp_path / "w")
    else:
        result = _measure_on_postgresql(sc, tmp_path / "w")
    assert result["create_errors"] == 0 and result["delete_errors"] == 0, result["first_errors"]
    assert result["api_shows_running"] == 20  # the API itself lists them running
    assert result["instances"] == 20 and result["hosts"] == 3
    for key in ("create_per_s", "p50_ms", "p99_ms", "delete_per_s", "delete_p99_ms"):
        value = result[key]
        assert isinstance(value, float) and value > 0, key
    p50, p99, top = result["p50_ms"], result["p99_ms"], result["max_ms"]
    assert isinstance(p50, float) and isinstance(p99, float) and isinstance(top, float)
    assert p50 <= p99 <= top
    api_cpu = result["api_cpu_s_create"]
    assert isinstance(api_cpu, float) and api_cpu > 0
    phase_s = result["phase_s"]  # where the section's time went
    assert isinstance(phase_s, dict)
    assert set(phase_s) == {"setup", "create", "delete", "open_loop"}
    assert all(v > 0 for v in phase_s.values())
    # the open-loop phases: 25, 50, 80 % of the saturation just measured, every create ran
    phases = result["open_loop"]
    assert isinstance(phases, list) and len(phases) == 3
    sat = result["create_per_s"]
    assert isinstance(sat, float)
    assert [ph["offered_per_s"] for ph in phases] == open_loop.offered_rates(sat)
    for ph in phases:
        assert ph["errors"] == 0, ph["first_errors"]
        assert ph["requests"] == max(1, round(ph["offered_per_s"] * 0.5))
        assert 0 < ph["p50_ms"] <= ph["p99_ms"] <= ph["p999_ms"]
        assert 0 < ph["running_p50_ms"] <= ph["running_p99_ms"]


def test_two_api_processes_share_the_work_over_postgresql(tmp_path: Path) -> None:
    """Hosts poll API 0 or 1, clients create through both: every create still runs (the
    wake-ups cross processes by LISTEN/NOTIFY)."""
    sc = control_plane.Scale(instances=12, hosts=2, clients=4, timeout_s=120, apis=2)
    result = _measure_on_postgresql(sc, tmp_path / "w")
    assert result["create_errors"] == 0 and result["delete_errors"] == 0, result["first_errors"]
    assert result["api_processes"] == 2 and result["api_shows_running"] == 12
    assert (tmp_path / "w" / "api1.log").exists()
