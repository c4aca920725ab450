"""`cumulo bench`: run the benchmarks of a repository checkout (they live in its `bench/`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cumulo.cli.client import CliError


def _repo_root() -> Path:
    """The checkout holding bench/runner.py: from the current directory up, else the one
    this package was installed from (an editable install)."""
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for d in (start, *start.parents):
            if (d / "bench" / "runner.py").is_file() and (d / "pyproject.toml").is_file():
                return d
    raise CliError("no_bench", "the benchmarks live in a cumulo repository checkout "
                   "(bench/runner.py); run `cumulo bench` from there")


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller runs (minutes, not tens); the migration "
                           "section only when named with --only.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="JSON results (default bench/results/latest.json).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only this section (repeatable): boot_to_ssh, "
                     "control_plane, footprint, idle, tcg_memory, many_hosts (only when asked)."),
    ] = None,
    no_doc: Annotated[
        bool, typer.Option("--no-doc", help="Do not rewrite the table in docs/benchmarks.md.")
    ] = False,
) -> None:
    """Run the benchmarks; write JSON and the results table of docs/benchmarks.md."""
    root = _repo_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    runner: Any = importlib.import_module("bench.runner")
    try:
        runner.main(quick, out, only, None if no_doc else root / "docs" / "benchmarks.md")
    except ValueError as e:
        raise CliError("invalid_section", str(e)) from None
