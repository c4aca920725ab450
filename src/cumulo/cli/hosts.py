"""`cumulo host ...` (admins) and `cumulo placement-group ...`"""

from __future__ import annotations

from typing import Annotated

import typer

from cumulo.cli.output import emit, out, state

hosts_app = typer.Typer(help="Hypervisor hosts (admin).", no_args_is_help=True)
groups_app = typer.Typer(help="Placement groups: instances kept apart (spread) or together "
                         "(cluster).", no_args_is_help=True)

HOST_COLUMNS = ["name", "zone", "state", "architectures", "accel", "vcpus_used",
                "vcpus_allocatable", "ram_mib_used", "ram_mib_allocatable", "instances",
                "agent_version", "last_heartbeat_at"]
HOST_SHOW = ["name", "zone", "state", "alive", "disabled_reason", "driver", "accel",
             "architectures", "vcpus_total", "vcpus_allocatable", "vcpus_used",
             "ram_mib_total", "ram_mib_allocatable", "ram_mib_used", "instances", "underlay_ip",
             "agent_version", "last_heartbeat_at"]
GROUP_COLUMNS = ["name", "strategy", "instances", "created_at"]


@hosts_app.command("list")
def host_list(ctx: typer.Context) -> None:
    """List the hosts: state (up, down, disabled), capacity, heartbeat."""
    st = state(ctx)
    emit(st, st.client().get("/v1/hosts", scoped=False), HOST_COLUMNS)


@hosts_app.command("show")
def host_show(ctx: typer.Context, name: str) -> None:
    """Show one host."""
    st = state(ctx)
    emit(st, st.client().get("/v1/hosts/{}", name, scoped=False), HOST_SHOW)


@hosts_app.command("disable")
def host_disable(
    ctx: typer.Context,
    name: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in `host show`).")] = "",
) -> None:
    """Place no new instance on HOST; the ones it has keep running."""
    st = state(ctx)
    emit(st, st.client().post("/v1/hosts/{}/disable", name, json={"reason": reason},
                              scoped=False), HOST_SHOW)


@hosts_app.command("enable")
def host_enable(ctx: typer.Context, name: str) -> None:
    """Make HOST a candidate for new instances again."""
    st = state(ctx)
    emit(st, st.client().post("/v1/hosts/{}/enable", name, scoped=False), HOST_SHOW)


@groups_app.command("create")
def group_create(
    ctx: typer.Context,
    name: str,
    strategy: Annotated[str, typer.Option(
        "--strategy", help="spread: each instance on another host; cluster: all on one.")],
) -> None:
    """Create a placement group (use it with `instance create --placement-group NAME`)."""
    st = state(ctx)
    emit(st, st.client().post("/v1/placement-groups",
                              json={"name": name, "strategy": strategy}), GROUP_COLUMNS)


@groups_app.command("list")
def group_list(ctx: typer.Context) -> None:
    """List the project's placement groups and their instances."""
    st = state(ctx)
    emit(st, st.client().get("/v1/placement-groups"), GROUP_COLUMNS)


@groups_app.command("delete")
def group_delete(ctx: typer.Context, name: str) -> None:
    """Delete an empty placement group."""
    st = state(ctx)
    st.client().delete("/v1/placement-groups/{}", name)
    if st.json:
        emit(st, {"name": name, "deleted": True}, ["name"])
    else:
        out.print(f"placement group {name} deleted")
