"""`cumulo instance migrate NAME`, `cumulo instance events NAME` and `cumulo migration ...`
(list, show, cancel): moving instances between hosts, running ones live, stopped ones cold
(admins)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn

from cumulo.cli import hosts, instances
from cumulo.cli.client import CliError
from cumulo.cli.output import CliState, emit, err, out, state

migration_app = typer.Typer(help="Live migrations of instances between hosts (admin).",
                            no_args_is_help=True)

COLUMNS = ["id", "instance", "source", "destination", "state", "downtime_ms", "total_s",
           "created_at"]
SHOW = ["id", "instance", "project", "source", "destination", "state", "progress",
        "downtime_ms", "total_s", "reason", "created_at", "updated_at", "finished_at"]
EVENT_COLUMNS = ["at", "kind", "actor", "detail"]
ENDED = ("completed", "failed", "cancelled", "evacuated")


@instances.app.command("migrate")
def migrate(
    ctx: typer.Context,
    name: str,
    to: Annotated[str | None, typer.Option(
        "--to", help="A host of the instance's zone (default: the scheduler picks).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Show its progress until it ends.")] = False,
    timeout: instances.Timeout = 1800.0,
) -> None:
    """Move an instance to another host: live while it runs, cold (disk copied) if stopped
    (admin)."""
    st = state(ctx)
    mig = st.client().post("/v1/instances/{}/migrate", name, json={"to": to})
    if wait:
        mig = follow(st, mig["id"], timeout)
    emit(st, mig, SHOW)
    if mig["state"] in ("failed", "cancelled"):
        raise CliError(f"migration_{mig['state']}",
                       f"migration {mig['id']} {mig['state']}: {mig['reason']}")


def follow(st: CliState, mig_id: str, timeout: float) -> dict[str, Any]:
    """Poll the migration until it ends, with a progress bar of what is copied (stderr)."""
    client = st.client()
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[detail]}"), console=err,
                  transient=True) as bar:
        task = bar.add_task(mig_id, total=1, detail="")
        while True:
            mig: dict[str, Any] = client.get("/v1/migrations/{}", mig_id, scoped=False)
            p = mig["progress"]
            total = (p["disk_bytes_total"] or 0) + (p["ram_bytes_total"] or 0)
            done = min(p["disk_bytes_copied"], p["disk_bytes_total"]) + min(
                p["ram_bytes_copied"], p["ram_bytes_total"])
            bar.update(task, total=max(total, 1), completed=done,
                       description=f"{mig_id} {mig['state']}",
                       detail=f"pass {p['passes']}, expected downtime "
                              f"{p['expected_downtime_ms']} ms")
            if mig["state"] in ENDED:
                return mig
            if time.monotonic() > deadline:
                raise CliError("timeout", f"migration {mig_id} did not end within {timeout:g} s"
                                          f" (now: {mig['state']})")
            time.sleep(0.5)


@instances.app.command("events")
def instance_events(ctx: typer.Context, name: str) -> None:
    """The instance's event log: created, started, migrated, stopped ..."""
    st = state(ctx)
    emit(st, st.client().get("/v1/instances/{}/events", name), EVENT_COLUMNS)


@migration_app.command("list")
def migration_list(ctx: typer.Context) -> None:
    """Every migration, oldest first."""
    st = state(ctx)
    emit(st, st.client().get("/v1/migrations", scoped=False), COLUMNS)


@migration_app.command("show")
def migration_show(ctx: typer.Context, migration_id: str) -> None:
    """One migration: state, progress, downtime, total time, reason."""
    st = state(ctx)
    emit(st, st.client().get("/v1/migrations/{}", migration_id, scoped=False), SHOW)


@migration_app.command("cancel")
def migration_cancel(ctx: typer.Context, migration_id: str) -> None:
    """Cancel before the switch-over: the instance runs on where it was."""
    st = state(ctx)
    emit(st, st.client().post("/v1/migrations/{}/cancel", migration_id, scoped=False), SHOW)


@hosts.hosts_app.command("drain")
def host_drain(
    ctx: typer.Context,
    name: str,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the migrations until every one ended.")] = False,
    timeout: instances.Timeout = 3600.0,
) -> None:
    """Disable HOST and move its instances off it (running ones live, stopped ones cold), a few
    at a time; say what it cannot move and why (admin)."""
    st = state(ctx)
    client = st.client()
    drained: dict[str, Any] = client.post("/v1/hosts/{}/drain", name, scoped=False)
    moves = drained["migrations"]
    if wait:
        deadline = time.monotonic() + timeout
        with err.status(f"draining {name}...") as status:
            while any(m["state"] not in ENDED for m in moves):
                if time.monotonic() > deadline:
                    raise CliError("timeout", f"host {name} not drained within {timeout:g} s")
                time.sleep(1)
                moves = [client.get("/v1/migrations/{}", m["id"], scoped=False) for m in moves]
                done = sum(m["state"] in ENDED for m in moves)
                status.update(f"draining {name}: {done}/{len(moves)} migrations ended")
        drained["migrations"] = moves
    if st.json:
        emit(st, drained, ["host"])
        return
    emit(st, moves, COLUMNS, title=f"host {name}: migrations")
    for u in drained["unmoved"]:
        err.print(f"not moved: {u['instance']}: {u['reason']}")


@hosts.hosts_app.command("evacuate")
def host_evacuate(ctx: typer.Context, name: str) -> None:
    """Restart the instances of HOST, which is down, on other hosts of its zone (admin). Their
    boot disks are NOT recovered: each starts from a new disk made from its image, with its
    volumes stored on other hosts; volumes stored on HOST stay there, detached. Says what it
    could not move and why."""
    st = state(ctx)
    done: dict[str, Any] = st.client().post("/v1/hosts/{}/evacuate", name, scoped=False)
    if st.json:
        emit(st, done, ["host"])
        return
    emit(st, done["moved"], ["instance", "project", "destination", "state", "migration"],
         title=f"host {name}: evacuated")
    for m in done["moved"]:
        if m.get("volumes") or m.get("volumes_left"):
            out.print(f"{m['instance']}: {m['note']}", soft_wrap=True)
    for u in done["unmoved"]:
        err.print(f"not moved: {u['instance']}: {u['reason']}")
    out.print(f"note: {done['note']}", soft_wrap=True)
