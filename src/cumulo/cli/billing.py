"""`cumulo price list` and `cumulo usage`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cumulo.cli.output import emit, state

price_app = typer.Typer(help="What resources cost.", no_args_is_help=True)

USAGE_COLUMNS = ["project", "resource", "kind", "basis", "seconds", "price_per_hour", "amount",
                 "currency"]


@price_app.command("list")
def price_list(ctx: typer.Context) -> None:
    """Prices per hour of each instance type, per GiB-month of volume and snapshot, per hour
    of a public IP and of a dedicated host."""
    st = state(ctx)
    emit(st, st.client().get("/v1/prices", scoped=False),
         ["kind", "name", "unit", "price", "price_per_hour", "currency"])


def usage(ctx: typer.Context,
          project: Annotated[str | None, typer.Option(
              "--project", help="This project's (admins; default: every project)")] = None,
          start: Annotated[str | None, typer.Option(
              "--from", help="A date (2026-01-31) or ISO 8601 time; default: this month's "
                             "start (UTC)")] = None,
          end: Annotated[str | None, typer.Option(
              "--to", help="A date or ISO 8601 time (excluded); default: now")] = None) -> None:
    """What each resource used in a period and what it costs, with a total."""
    st = state(ctx)
    params = {k: v for k, v in (("project", project or st.project), ("from", start),
                                ("to", end)) if v}
    data: dict[str, Any] = st.client().get("/v1/usage", params=params, scoped=False)
    if st.json:
        emit(st, data, [])
        return
    total = {"project": "total", "amount": data["total"], "currency": data["currency"]}
    emit(st, [*data["lines"], total], USAGE_COLUMNS,
         title=f"usage from {data['from']} to {data['to']}")
