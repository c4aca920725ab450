"""`cumulo dedicated-host ...`: whole hosts reserved for one project."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cumulo.cli.output import emit, state

app = typer.Typer(help="Dedicated hosts: a whole hypervisor host for the project's instances "
                  "(place on one with `instance create --dedicated-host ID` or "
                  "`--tenancy dedicated`).", no_args_is_help=True)

COLUMNS = ["id", "zone", "host", "state", "instances", "vcpus", "ram_mib"]
SHOW = ["id", "zone", "host", "project", "state", "instances", "vcpus", "ram_mib",
        "allocated_at", "released_at"]


def _table(view: dict[str, Any]) -> dict[str, Any]:
    """Capacity as used/total columns (the JSON output keeps the `capacity` object)."""
    cap = view.get("capacity")
    return view | {
        "vcpus": "" if not cap else f"{cap['vcpus_used']}/{cap['vcpus_total']}",
        "ram_mib": "" if not cap else f"{cap['ram_mib_used']}/{cap['ram_mib_total']}",
    }


def _emit(ctx: typer.Context, data: Any, columns: list[str]) -> None:
    st = state(ctx)
    if st.json:
        emit(st, data, columns)
    else:
        emit(st, [_table(d) for d in data] if isinstance(data, list) else _table(data), columns)


@app.command("allocate")
def allocate(
    ctx: typer.Context,
    zone: Annotated[str, typer.Option("--zone", help="The zone of the host.")],
    host: Annotated[str | None, typer.Option(
        "--host", help="This host (admins); default: an empty enabled host of the zone.")] = None,
) -> None:
    """Reserve a whole host of ZONE for the project (admins, or within the project's
    dedicated_hosts quota)."""
    st = state(ctx)
    _emit(ctx, st.client().post("/v1/dedicated-hosts", json={"zone": zone, "host": host}), SHOW)


@app.command("list")
def list_all(ctx: typer.Context) -> None:
    """The project's dedicated hosts (available and released)."""
    st = state(ctx)
    _emit(ctx, st.client().get("/v1/dedicated-hosts"), COLUMNS)


@app.command("show")
def show(ctx: typer.Context, host_id: str) -> None:
    """Show one dedicated host: its instances and capacity."""
    st = state(ctx)
    _emit(ctx, st.client().get("/v1/dedicated-hosts/{}", host_id), SHOW)


@app.command("release")
def release(ctx: typer.Context, host_id: str) -> None:
    """Give the host back to shared use (refused while instances are on it)."""
    st = state(ctx)
    _emit(ctx, st.client().post("/v1/dedicated-hosts/{}/release", host_id), SHOW)
