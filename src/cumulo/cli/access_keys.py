"""`cumulo project access-key create | list | delete`: EC2 API credentials of a project."""

from __future__ import annotations

from typing import Annotated

import typer

from cumulo.cli.output import CliState, emit, out, state

app = typer.Typer(help="EC2 API access keys of a project.", no_args_is_help=True)

ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="The project (default: the global --project).")
]
COLUMNS = ["access_key_id", "project", "created_at"]


def _params(st: CliState, project: str | None) -> dict[str, str]:
    chosen = project or st.project
    return {"project": chosen} if chosen else {}


@app.command("create")
def create(ctx: typer.Context, project: ProjectOpt = None) -> None:
    """Create a key; the secret is shown once."""
    st = state(ctx)
    key = st.client().post("/v1/access-keys", params=_params(st, project), scoped=False)
    emit(st, key, [*COLUMNS, "secret_access_key"])


@app.command("list")
def list_keys(ctx: typer.Context, project: ProjectOpt = None) -> None:
    """List a project's keys (never their secrets)."""
    st = state(ctx)
    emit(st, st.client().get("/v1/access-keys", params=_params(st, project), scoped=False),
         COLUMNS)


@app.command("delete")
def delete(ctx: typer.Context, key_id: str, project: ProjectOpt = None) -> None:
    """Delete a key: requests signed with it fail from now on."""
    st = state(ctx)
    st.client().delete("/v1/access-keys/{}", key_id, params=_params(st, project), scoped=False)
    if st.json:
        emit(st, {"access_key_id": key_id, "deleted": True}, ["access_key_id"])
    else:
        out.print(f"access key {key_id} deleted")
