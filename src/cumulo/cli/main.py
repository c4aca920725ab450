"""The `cumulo` command."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.main

from cumulo.allinone.paths import DEFAULT_PORT, default_state_dir
from cumulo.cli import (
    access_keys,
    agent_cmd,
    baremetal,
    bench,
    billing,
    catalogue,
    dedicated_hosts,
    hosts,
    images,
    instances,
    join_tokens,
    migrations,
    networking,
    observe,
    volumes,
)
from cumulo.cli.client import CliError
from cumulo.cli.output import CliState, err
from cumulo.domain.errors import CumuloError
from cumulo.domain.validation import one_line

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
catalogue.projects_app.add_typer(observe.quota_app, name="quota")
app.command("events")(observe.events)
app.add_typer(billing.price_app, name="price")
app.command("usage")(billing.usage)
hosts.hosts_app.add_typer(join_tokens.join_token_app, name="join-token")
app.add_typer(hosts.hosts_app, name="host")
app.add_typer(hosts.groups_app, name="placement-group")
app.add_typer(migrations.migration_app, name="migration")
app.add_typer(dedicated_hosts.app, name="dedicated-host")
app.add_typer(baremetal.baremetal_app, name="baremetal")
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
    baremetal_nodes: Annotated[
        int,
        typer.Option("--baremetal-nodes", min=0, max=16,
                     help="Emulated bare-metal servers (QEMU behind a Redfish BMC emulator on "
                     "loopback), enrolled as bm-1..bm-N."),
    ] = 0,
) -> None:
    """Run the whole cloud (API, scheduler, local agents) in the foreground."""
    from cumulo.allinone import up as up_mod

    up_mod.run((state_dir or default_state_dir()).absolute(), port, config, database_url, hosts,
               baremetal_nodes)


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


@functools.cache
def command() -> Any:
    """The Click command Typer builds from `app` (once: building it reads every command's
    signature, a third of a second)."""
    return typer.main.get_command(app)


def usage_line(e: typer.TyperException) -> str:
    """The parser's error as the one line every failure gets: `no such option: -x (see
    cumulo instance create --help)` (no usage box: a script reads the code, a person the
    hint)."""
    message = e.format_message().strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    command_path = getattr(getattr(e, "ctx", None), "command_path", None)
    if isinstance(command_path, str):
        message += f" (see {command_path} --help)"
    return one_line(message, 500)


def _fail(code: str, message: str, status: int = 1) -> NoReturn:
    print(f"error[{code}]: {message}", file=sys.stderr)
    sys.exit(status)


def main() -> None:
    # Not standalone: Typer would print its own usage box for a parser error and exit; here
    # every command's parser errors end, like every other failure, as one line.
    try:
        status = command()(prog_name="cumulo", standalone_mode=False)
    except typer.TyperException as e:
        # Typer exports only the base of its (vendored) Click exceptions: a usage error is
        # the one that exits 2. `cumulo instance` alone printed its help (no_args_is_help):
        # nothing to add; typer's own formatter skips that error by its name too.
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(e.exit_code)
        _fail("usage" if e.exit_code == 2 else "invalid_input", usage_line(e), e.exit_code)
    except typer.Abort:
        _fail("aborted", "aborted")
    except (CliError, CumuloError) as e:
        _fail(e.code, e.message)
    except KeyboardInterrupt:
        sys.exit(130)
    # A command's own exit status (`cumulo ssh` returns the remote one), else success.
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
