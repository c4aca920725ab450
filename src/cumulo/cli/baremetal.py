"""`cumulo baremetal node ...` (admins): physical servers driven over their BMC's Redfish."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cumulo.cli.client import CliError
from cumulo.cli.output import CliState, emit, out, state

baremetal_app = typer.Typer(help="Bare-metal servers (admin).", no_args_is_help=True)
node_app = typer.Typer(help="Bare-metal nodes: physical servers with a Redfish BMC.",
                       no_args_is_help=True)
baremetal_app.add_typer(node_app, name="node")

NODE_COLUMNS = ["name", "zone", "state", "power_state", "arch", "vcpus", "ram_mib", "disk_gib",
                "instance", "last_error"]
NODE_SHOW = ["name", "zone", "state", "deploy_step", "last_error", "power_state", "arch", "vcpus",
             "ram_mib", "disk_gib", "instance", "redfish_url", "redfish_system", "bmc_username",
             "mac", "port_host", "facts", "created_at", "updated_at"]
MAX_PASSWORD_FILE = 4096


@node_app.command("enroll")
def node_enroll(
    ctx: typer.Context,
    name: str,
    zone: Annotated[str, typer.Option("--zone", help="The zone the server stands in.")],
    redfish: Annotated[str, typer.Option("--redfish", help="The BMC: http(s)://HOST[:PORT].")],
    system: Annotated[str, typer.Option("--system", help="The Redfish System id (or path).")],
    arch: Annotated[str, typer.Option("--arch", help="x86_64 or arm64.")],
    vcpus: Annotated[int, typer.Option("--vcpus", help="Logical CPUs.")],
    ram: Annotated[int, typer.Option("--ram", help="RAM in MiB.")],
    disk: Annotated[int, typer.Option("--disk", help="Disk in GiB.")],
    username: Annotated[str | None, typer.Option("--username", help="The BMC's user.")] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="A file holding the BMC's password (never on the command "
        "line: it would show in `ps` and the shell's history).")] = None,
    port_host: Annotated[str | None, typer.Option(
        "--port-host", help="The hypervisor host whose fabric the server's NIC is cabled to "
        "(without it, the server has no network).")] = None,
) -> None:
    """Enroll a server: cumulo checks its BMC, inspects it, then makes it available."""
    st = state(ctx)
    body: dict[str, Any] = {"name": name, "zone": zone, "redfish_url": redfish,
                            "system": system, "arch": arch, "vcpus": vcpus, "ram_mib": ram,
                            "disk_gib": disk, "username": username, "port_host": port_host}
    if password_file is not None:
        body["password"] = _read_password(password_file)
    emit(st, st.client().post("/v1/baremetal/nodes", json=body, scoped=False), NODE_SHOW)


@node_app.command("list")
def node_list(ctx: typer.Context) -> None:
    """List the nodes: state, power, size, the instance on each, the last error."""
    st = state(ctx)
    emit(st, st.client().get("/v1/baremetal/nodes", scoped=False), NODE_COLUMNS)


@node_app.command("show")
def node_show(ctx: typer.Context, name: str) -> None:
    """Show one node, with the facts its inspection read over Redfish."""
    st = state(ctx)
    emit(st, st.client().get("/v1/baremetal/nodes/{}", name, scoped=False), NODE_SHOW)


@node_app.command("retry")
def node_retry(ctx: typer.Context, name: str) -> None:
    """Send a node in error back to work: cleaning again if its cleaning failed, else
    enroll (its BMC checked and the machine inspected again)."""
    st = state(ctx)
    _told(st, st.client().post("/v1/baremetal/nodes/{}/retry", name, scoped=False),
          "bare-metal node {name} is {state} again")


@node_app.command("delete")
def node_delete(ctx: typer.Context, name: str) -> None:
    """Power a node off and forget it (refused while it has an instance)."""
    st = state(ctx)
    _told(st, st.client().delete("/v1/baremetal/nodes/{}", name, scoped=False),
          "bare-metal node {name} is being deleted")


def _told(st: CliState, node: dict[str, Any], line: str) -> None:
    """A node an action answered: its JSON with -o json, else `line` (formatted with it)."""
    if st.json:
        emit(st, node, NODE_SHOW)
    else:
        out.print(line.format(**node))


def _read_password(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PASSWORD_FILE + 1)
    except OSError as e:
        raise CliError("invalid_password_file", f"cannot read {path}: {e.strerror}") from e
    if len(raw) > MAX_PASSWORD_FILE:
        raise CliError("invalid_password_file", f"{path} is too large for a password")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError("invalid_password_file", f"{path} is not text") from None
    # One trailing newline is the file's, not the password's (what `echo pw > file` makes).
    return text.removesuffix("\n").removesuffix("\r")
