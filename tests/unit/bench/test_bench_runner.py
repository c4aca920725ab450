"""The benchmark runner: JSON shape, machine facts, the table rewrite in docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import runner  # noqa: E402

FAKE: dict[str, Any] = {
    "date": "2026-01-01T00:00:00Z",
    "quick": True,
    "machine": {"cpu_model": "Test CPU", "cores": 2, "ram_gib": 24.0, "kernel": "6.1",
                "debian": "12.5", "python": "3.11.7", "qemu": "7.2.9", "cumulo": "0.1.0",
                "commit": "abc1234", "accelerator": "tcg"},
    "control_plane": {"sqlite": {"create_per_s": 250.0, "p50_ms": 20.0, "p99_ms": 150.0,
                                 "instances": 500, "hosts": 100, "clients": 20, "projects": 1,
                                 "create_errors": 0, "api_cpu_percent_create": 90.0}},
}


def test_machine_facts_are_collected() -> None:
    facts = runner.machine_facts()
    assert set(facts) == {"cpu_model", "cores", "ram_gib", "kernel", "debian", "python", "qemu",
                          "cumulo", "commit", "accelerator"}
    assert facts["cores"] >= 1 and facts["python"].startswith("3.")


def test_sections_merge_and_missing_ones_are_absent(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    calls: list[tuple[str, bool]] = []

    def fake_load(name: str) -> Any:
        if name != "control_plane":
            return None  # not written yet

        def run(quick: bool) -> dict[str, Any]:
            calls.append((name, quick))
            return {"sqlite": {"create_per_s": 1.0, "p50_ms": 2.0, "p99_ms": 3.0}}

        return run

    monkeypatch.setattr(runner, "load_section", fake_load)
    out = tmp_path / "r.json"
    doc = tmp_path / "benchmarks.md"
    runner.main(True, out, None, doc)
    data = json.loads(out.read_text())
    assert calls == [("control_plane", True)]
    assert data["control_plane"]["sqlite"] == {"create_per_s": 1.0, "p50_ms": 2.0, "p99_ms": 3.0}
    assert "boot_to_ssh" not in data and "idle" not in data and data["quick"] is True
    assert set(data["machine"]) >= {"cpu_model", "cores", "qemu", "commit", "accelerator"}
    table = doc.read_text()
    assert "| creates to running, SQLite | 1 instances/s | >= 200: MISSED |" in table
    assert "| boot to SSH, x86_64, p50 | not measured |" in table


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown section"):
        runner.run_all(True, ["nope"])


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every section is an empty one; the names of those run, in order."""
    names: list[str] = []

    def fake_load(name: str) -> Any:
        def run(quick: bool) -> dict[str, Any]:
            names.append(name)
            return {}

        return run

    monkeypatch.setattr(runner, "load_section", fake_load)
    return names


def test_many_hosts_runs_only_when_asked(ran: list[str]) -> None:
    runner.run_all(True)
    assert "many_hosts" not in ran and "tcg_memory" in ran  # a default run leaves it out
    ran.clear()
    runner.run_all(True, ["many_hosts"])
    assert ran == ["many_hosts"]
    assert runner.load_section("many_hosts") is not None


def test_unwritten_section_module_loads_as_none() -> None:
    assert runner.load_section("no_such_section_yet") is None
    assert runner.load_section("control_plane") is not None


def test_table_rewrite_keeps_the_rest_of_the_doc(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nHow to reproduce.\n\n{runner.BEGIN}\nold table\n{runner.END}"
                   "\n\n## What each number means\n\nPromises.\n")
    runner.rewrite_doc(doc, FAKE)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nHow to reproduce.\n\n")
    assert text.endswith(f"{runner.END}\n\n## What each number means\n\nPromises.\n")
    assert "old table" not in text
    assert "| create call p99, SQLite, closed loop | 150 ms |  |" in text  # promise retired
    assert "| creates to running, SQLite | 250 instances/s | >= 200: met |" in text
    assert "| create call p50, PostgreSQL, closed loop | not measured |" in text
    assert "Test CPU, 2 cores" in text and "accelerator tcg" in text
    runner.rewrite_doc(doc, FAKE)  # idempotent: one block, still
    assert doc.read_text() == text


def test_the_real_doc_has_the_markers() -> None:
    text = (REPO / "docs" / "benchmarks.md").read_text()
    assert text.count(runner.BEGIN) == 1 and text.count(runner.END) == 1


def test_quick_leaves_out_full_only_sections_unless_named(ran: list[str]) -> None:
    data = runner.run_all(True)
    assert "migration" not in ran and "control_plane" in ran
    assert set(data["section_seconds"]) == set(ran)  # where the run's time went
    ran.clear()
    runner.run_all(False)
    assert "migration" in ran
    ran.clear()
    runner.run_all(True, ["migration"])
    assert ran == ["migration"]
