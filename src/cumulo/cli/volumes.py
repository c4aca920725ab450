"""`cumulo volume ...` and `cumulo snapshot ...`"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cumulo.cli.client import CliError
from cumulo.cli.output import CliState, emit, err, out, state

volume_app = typer.Typer(help="Block volumes (disks).", no_args_is_help=True)
snapshot_app = typer.Typer(help="Volume snapshots.", no_args_is_help=True)

COLUMNS = ["name", "size_gib", "type", "state", "attached_to", "device", "zone", "id"]
SHOW = ["id", "name", "project", "zone", "size_gib", "type", "iops", "mbps", "state",
        "state_reason", "attached_to", "device", "delete_on_termination", "source_snapshot",
        "created_at"]
SNAP_COLUMNS = ["name", "volume", "size_gib", "state", "zone", "id"]

Wait = Annotated[bool, typer.Option("--wait", help="Follow the state until it settles.")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]


def _wait(st: CliState, ref: str, done: Any, timeout: float) -> dict[str, Any] | None:
    """Poll the volume until done(volume) is true (None: until it is gone)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    with err.status(f"waiting for volume {ref}...") as status:
        while time.monotonic() < deadline:
            try:
                last = st.client().get("/v1/volumes/{}", ref)
            except CliError as e:
                if done is None and e.code == "unknown_volume":
                    return None
                raise
            assert last is not None
            status.update(f"volume {ref}: {last['state']}")
            if done is not None and done(last):
                return last
            if last["state"] == "error":
                raise CliError("volume_error", f"volume {ref} is in error: "
                                               f"{last['state_reason']}")
            time.sleep(0.2)
    raise CliError("timeout", f"volume {ref} did not settle within {timeout:g} s "
                              f"(now: {last['state'] if last else '?'})")


def _show(st: CliState, data: dict[str, Any] | None) -> None:
    if data is not None:
        emit(st, data, SHOW)


@volume_app.command("create")
def create(
    ctx: typer.Context, name: str,
    size: Annotated[int, typer.Option("--size", help="GiB")],
    zone: Annotated[str | None, typer.Option("--zone")] = None,
    type_: Annotated[str, typer.Option("--type", help="volume type")] = "standard",
    from_snapshot: Annotated[str | None, typer.Option("--from-snapshot")] = None,
    delete_on_termination: Annotated[bool, typer.Option(
        "--delete-on-termination", help="delete it with the instance it is attached to")
    ] = False,
    wait: Wait = False, timeout: Timeout = 300.0,
) -> None:
    """Create a volume (empty, or a copy of a snapshot)."""
    st = state(ctx)
    v = st.client().post("/v1/volumes", json={
        "name": name, "size_gib": size, "zone": zone, "type": type_,
        "from_snapshot": from_snapshot, "delete_on_termination": delete_on_termination})
    _show(st, _wait(st, v["id"], lambda x: x["state"] == "available", timeout) if wait else v)


@volume_app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the project's volumes."""
    st = state(ctx)
    emit(st, st.client().get("/v1/volumes"), COLUMNS)


@volume_app.command("show")
def show(ctx: typer.Context, volume: str) -> None:
    """Show one volume."""
    st = state(ctx)
    _show(st, st.client().get("/v1/volumes/{}", volume))


@volume_app.command("attach")
def attach(ctx: typer.Context, volume: str, instance: str, wait: Wait = False,
           timeout: Timeout = 300.0) -> None:
    """Attach to an instance (hot-plugged when it runs)."""
    st = state(ctx)
    v = st.client().post("/v1/volumes/{}/attach", volume, json={"instance": instance})
    _show(st, _wait(st, v["id"], lambda x: x["state"] == "in-use", timeout) if wait else v)


@volume_app.command("detach")
def detach(ctx: typer.Context, volume: str, wait: Wait = False,
           timeout: Timeout = 300.0) -> None:
    """Detach (hot-unplug; the guest must release the disk)."""
    st = state(ctx)
    v = st.client().post("/v1/volumes/{}/detach", volume)
    _show(st, _wait(st, v["id"], lambda x: x["state"] == "available", timeout) if wait else v)


@volume_app.command("resize")
def resize(ctx: typer.Context, volume: str,
           size: Annotated[int, typer.Option("--size", help="new size in GiB (larger)")],
           wait: Wait = False, timeout: Timeout = 300.0) -> None:
    """Grow a volume, also while attached (the guest sees the new size)."""
    st = state(ctx)
    v = st.client().post("/v1/volumes/{}/resize", volume, json={"size_gib": size})
    _show(st, _wait(st, v["id"], lambda x: x["state"] in ("available", "in-use"), timeout)
          if wait else v)


@volume_app.command("snapshot")
def snapshot(ctx: typer.Context, volume: str, snapname: str, wait: Wait = False,
             timeout: Timeout = 300.0) -> None:
    """Take a snapshot (crash-consistent while attached)."""
    st = state(ctx)
    snap = st.client().post("/v1/volumes/{}/snapshots", volume, json={"name": snapname})
    deadline = time.monotonic() + timeout
    while wait and snap["state"] == "creating" and time.monotonic() < deadline:
        time.sleep(0.2)
        snap = next((x for x in st.client().get("/v1/snapshots") if x["id"] == snap["id"]),
                    snap)
    if wait and snap["state"] != "available":
        raise CliError("snapshot_error", f"snapshot {snapname} is {snap['state']}: "
                                         f"{snap['state_reason']}")
    emit(st, snap, SNAP_COLUMNS)


@volume_app.command("delete")
def delete(ctx: typer.Context, volume: str, wait: Wait = False,
           timeout: Timeout = 300.0) -> None:
    """Delete a detached volume."""
    st = state(ctx)
    v = st.client().delete("/v1/volumes/{}", volume)
    if wait:
        _wait(st, v["id"], None, timeout)
        if st.json:
            emit(st, {"name": volume, "state": "deleted"}, [])
        else:
            out.print(f"volume {volume} deleted")
        return
    _show(st, v)


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context) -> None:
    """List the project's snapshots."""
    st = state(ctx)
    emit(st, st.client().get("/v1/snapshots"), SNAP_COLUMNS)


@snapshot_app.command("delete")
def snapshot_delete(ctx: typer.Context, name: str) -> None:
    """Delete a snapshot."""
    st = state(ctx)
    st.client().delete("/v1/snapshots/{}", name)
    if st.json:
        emit(st, {"name": name, "deleted": True}, [])
    else:
        out.print(f"snapshot {name} deleted")
