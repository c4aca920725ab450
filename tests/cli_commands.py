"""The `cumulo` command line as tests drive it in-process: every command of the Typer app
(so a new one is covered by the tests that walk them), and a run through the entry point the
`cumulo` script calls (its exit status, stdout and stderr)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from cumulo.cli import main as cli_main


def commands() -> Iterator[tuple[list[str], Any]]:
    """(path, Click command) of every leaf command: (["instance", "create"], ...)."""
    def walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield path, command
            return
        for name, sub in subcommands.items():
            yield from walk(sub, [*path, name])

    yield from walk(cli_main.command(), [])


def run(capture: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`cumulo ARGV`: (exit status, stdout, stderr)."""
    saved = sys.argv
    sys.argv = ["cumulo", *argv]
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main.main()
    finally:
        sys.argv = saved
    out, err = capture.readouterr()
    code = exited.value.code
    return code if isinstance(code, int) else 1, out, err
