"""The `cumulo` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cumulo.allinone.paths import DEFAULT_PORT, default_state_dir
from cumulo.cli import (
    agent_cmd,
    bench,
    catalogue,
    hosts,
    images,
    instances,
    join_tokens,
    networking,
    volumes,
)
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
app.add_typer(networking.keypair_app, name="keypair")
app.add_typer(networking.group_app, name="security-group")
app.add_typer(networking.network_app, name="network")
app.add_typer(networking.ip_app, name="ip")
app.add_typer(volumes.volume_app, name="volume")
app.add_typer(volumes.snapshot_app, name="snapshot")
hosts.hosts_app.add_typer(join_tokens.join_token_app, name="join-token")
app.add_typer(hosts.hosts_app, name="host")
app.add_typer(hosts.groups_app, name="placement-group")
app.command("bench")(bench.bench)
app.command("agent")(agent_cmd.agent)
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
    hosts: Annotated[
        int | None,
        typer.Option("--hosts", help="Simulated hypervisor hosts, each its own namespace, "
                     "agent and underlay address, spread over the zones (default: as many as "
                     "the state dir has, else 1)."),
    ] = None,
) -> None:
    """Run the whole cloud (API, scheduler, local agents) in the foreground."""
    from cumulo.allinone import up as up_mod

    up_mod.run((state_dir or default_state_dir()).absolute(), port, config, database_url, hosts)


@app.command()
def api(
    database_url: Annotated[
        str,
        typer.Option("--database-url", envvar="CUMULO_DATABASE_URL",
                     help="SQLAlchemy URL (PostgreSQL for several API processes)."),
    ],
    listen: Annotated[str, typer.Option("--listen", help="ADDRESS:PORT to serve on.")] =
        f"127.0.0.1:{DEFAULT_PORT}",
    state_dir: StateDir = None,
    config: Annotated[Path | None, typer.Option("--config", help="Server TOML config.")] = None,
) -> None:
    """Run an API process alone (hosts run `cumulo agent`); several may share PostgreSQL."""
    from cumulo.allinone import api_process

    api_process.run(database_url, listen, (state_dir or default_state_dir()).absolute(),
                    config)


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
