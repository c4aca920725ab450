"""Rendering: rich tables for people, `-o json` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cumulo.cli.client import Client, load_client_config

# Piped output is not cut to 80 columns: scripts grep it.
out = Console(width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True)


@dataclass
class CliState:
    output: str = "table"
    project: str | None = None
    _client: Client | None = None

    @property
    def json(self) -> bool:
        return self.output == "json"

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(load_client_config(), self.project)
        return self._client


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def emit(st: CliState, data: Any, columns: Sequence[str], title: str | None = None) -> None:
    """Print `data` (a dict or a list of dicts) as JSON or as a table of `columns`."""
    if st.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if not isinstance(data, list):  # one object: key/value view
        table = Table(show_header=False, box=None, title=title)
        for key in columns:
            table.add_row(key, _fmt(data.get(key)))
        out.print(table)
        return
    table = Table(title=title, box=None, header_style="bold")
    for c in columns:
        table.add_column(c.upper())
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    out.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
