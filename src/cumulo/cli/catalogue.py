"""`cumulo type|zone|project ...` (images: images.py)"""

from __future__ import annotations

from typing import Any

import typer

from cumulo.cli.output import emit, out, state

types_app = typer.Typer(help="Instance types.", no_args_is_help=True)
zones_app = typer.Typer(help="Datacenters (zones) and their hosts.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects (admin).", no_args_is_help=True)


@types_app.command("list")
def type_list(ctx: typer.Context) -> None:
    """List instance types."""
    st = state(ctx)
    emit(
        st,
        st.client().get("/v1/instance-types", scoped=False),
        ["name", "vcpus", "ram_mib", "bandwidth_mbps", "disk_gib", "architectures",
         "baremetal"],
    )


@zones_app.command("list")
def zone_list(ctx: typer.Context) -> None:
    """List zones with their hosts and free capacity."""
    st = state(ctx)
    zones: list[dict[str, Any]] = st.client().get("/v1/zones", scoped=False)
    if st.json:
        emit(st, zones, [])
        return
    rows = []
    for z in zones:
        hosts = z["hosts"] or [None]
        for h in hosts:
            rows.append(
                {
                    "zone": z["name"],
                    "region": z["region"],
                    "host": h["name"] if h else None,
                    "state": h["state"] if h else None,
                    "accel": h["accel"] if h else None,
                    "vcpus_free": (h["vcpus_allocatable"] - h["vcpus_used"]) if h else 0,
                    "ram_mib_free": (h["ram_mib_allocatable"] - h["ram_mib_used"]) if h else 0,
                    "disk_mib_free": h.get("disk_room_mib") if h else None,
                    "instances": h["instances"] if h else 0,
                }
            )
    emit(
        st,
        rows,
        ["zone", "region", "host", "state", "accel", "vcpus_free", "ram_mib_free", "disk_mib_free",
         "instances"],
    )


@projects_app.command("create")
def project_create(ctx: typer.Context, name: str) -> None:
    """Create a project."""
    st = state(ctx)
    emit(
        st,
        st.client().post("/v1/projects", json={"name": name}, scoped=False),
        ["id", "name", "created_at"],
    )


@projects_app.command("list")
def project_list(ctx: typer.Context) -> None:
    """List projects."""
    st = state(ctx)
    emit(st, st.client().get("/v1/projects", scoped=False), ["name", "id", "created_at"])


@projects_app.command("delete")
def project_delete(ctx: typer.Context, name: str) -> None:
    """Delete an empty project."""
    st = state(ctx)
    st.client().delete("/v1/projects/{}", name, scoped=False)
    if st.json:
        emit(st, {"name": name, "deleted": True}, ["name"])
    else:
        out.print(f"project {name} deleted")


@projects_app.command("token")
def project_token(ctx: typer.Context, name: str) -> None:
    """Issue a token that acts only inside project NAME (shown once)."""
    st = state(ctx)
    emit(st, st.client().post("/v1/projects/{}/tokens", name, scoped=False), ["token"])
