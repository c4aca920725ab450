"""The `cumulo` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cumulo.allinone.paths import DEFAULT_PORT, default_state_dir
from cumulo.cli import access_keys, bench, catalogue, images, instances, networking, volumes
from cumulo.cli.client import CliError
from cumulo.cli.output import CliState, err
from cumulo.domain.errors import CumuloError

app = typer.Typer(
    help="cumulo: a self-hostable compute cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(instances.app, name="instance")
app.add_typer(catalogue.types_app, name="type")
app.add_typer(images.images_app, name="image")
app.add_typer(catalogue.zones_app, name="zone")
app.add_typer(catalogue.projects_app, name="project")
catalogue.projects_app.add_typer(access_keys.app, name="access-key")
app.add_typer(networking.keypair_app, name="keypair")
app.add_typer(networking.group_app, name="security-group")
app.add_typer(networking.network_app, name="network")
app.add_typer(networking.ip_app, name="ip")
app.add_typer(volumes.volume_app, name="volume")
app.add_typer(volumes.snapshot_app, name="snapshot")
app.command("bench")(bench.bench)
app.command("ssh", context_settings={"allow_interspersed_args": False})(networking.ssh)


@app.callback()
def _global(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    project: Annotated[
        str | None, typer.Option("--project", help="Act in this project (admins).")
    ] = None,
) -> None:
    if output not in ("table", "json"):
        raise CliError("invalid_output", f"unknown output format {output!r} (table or json)")
    ctx.obj = CliState(output=output, project=project)


StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where the cloud keeps its database, disks and config."),
]


@app.command()
def up(
    state_dir: StateDir = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = DEFAULT_PORT,
    config: Annotated[Path | None, typer.Option("--config", help="Server TOML config.")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="CUMULO_DATABASE_URL",
            help="SQLAlchemy URL; default: SQLite in the state dir.",
        ),
    ] = None,
) -> None:
    """Run the whole cloud (API, scheduler, local agent) in the foreground."""
    from cumulo.allinone import up as up_mod

    up_mod.run((state_dir or default_state_dir()).absolute(), port, config, database_url)


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop the cloud and its VMs; disks and the database are kept."""
    from cumulo.allinone import down as down_mod

    stopped = down_mod.run((state_dir or default_state_dir()).absolute())
    err.print(f"cumulo: stopped {stopped} VM(s); disks and database kept")


def main() -> None:
    try:
        app()
    except CliError as e:
        print(f"error[{e.code}]: {e.message}", file=sys.stderr)
        sys.exit(1)
    except CumuloError as e:
        print(f"error[{e.code}]: {e.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
