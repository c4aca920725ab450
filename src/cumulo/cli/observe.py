"""`cumulo project quota ...` and `cumulo events`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cumulo.cli.client import CliError, segment
from cumulo.cli.output import emit, state

quota_app = typer.Typer(help="Limits of a project and its usage.", no_args_is_help=True)

QUOTA_COLUMNS = ["resource", "used", "limit", "default"]
EVENT_COLUMNS = ["at", "project", "resource_type", "resource_name", "kind", "actor", "detail"]


def _show(st: Any, quota: dict[str, Any]) -> None:
    if st.json:
        emit(st, quota, [])
        return
    rows = [q | {"limit": "unlimited" if q["limit"] is None else q["limit"]}
            for q in quota["quotas"]]
    emit(st, rows, QUOTA_COLUMNS, title=f"project {quota['project']}")


@quota_app.command("show")
def quota_show(ctx: typer.Context, name: Annotated[str | None, typer.Argument(
        help="The project (default: --project, or your token's)")] = None) -> None:
    """Each limit beside what the project uses."""
    st = state(ctx)
    if name is None:  # the project in scope: --project, or the token's (admins: default)
        _show(st, st.client().get("/v1/quotas"))
    else:
        _show(st, st.client().get(f"/v1/projects/{segment(name)}/quotas", scoped=False))


@quota_app.command("set")
def quota_set(ctx: typer.Context, name: str,
              limits: Annotated[list[str], typer.Argument(
                  help="KEY=VALUE: instances, vcpus, ram_mib, volume_gib, snapshots, "
                       "public_ips, networks; VALUE a number, 'unlimited' or 'default'")]
              ) -> None:
    """Set limits of project NAME (admin)."""
    st = state(ctx)
    changes: dict[str, str] = {}
    for pair in limits:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise CliError("invalid_quota", f"{pair!r}: write KEY=VALUE, e.g. vcpus=8")
        changes[key] = value
    _show(st, st.client().request("PATCH", f"/v1/projects/{segment(name)}/quotas",
                                  json={"limits": changes}, scoped=False))


def events(ctx: typer.Context,
           project: Annotated[str | None, typer.Option(
               "--project", help="This project's (admins; default: every project)")] = None,
           resource: Annotated[str | None, typer.Option(
               "--resource", help="One resource's, by id or name")] = None,
           since: Annotated[str | None, typer.Option(
               "--since", help="ISO 8601 time or an age: 30s, 10m, 2h, 7d")] = None,
           limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 1000) -> None:
    """What happened to your resources, oldest first."""
    st = state(ctx)
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("project", project or st.project), ("resource", resource),
                       ("since", since)):
        if value:
            params[key] = value
    emit(st, st.client().get("/v1/events", params=params, scoped=False), EVENT_COLUMNS)
