"""`cumulo instance ...`"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cumulo.cli.client import CliError
from cumulo.cli.output import CliState, emit, err, out, state
from cumulo.domain.validation import MAX_USER_DATA_BYTES

app = typer.Typer(help="Create and manage instances (virtual machines).", no_args_is_help=True)

COLUMNS = ["name", "state", "zone", "arch", "type", "vcpus", "ram_mib", "image", "private_ip",
           "public_ip", "id"]
SHOW = ["id", "name", "project", "state", "state_reason", "desired_state", "region", "zone",
        "arch", "type", "vcpus", "ram_mib", "bandwidth_mbps", "disk_gib", "image", "host",
        "placement_group", "tenancy", "dedicated_host", "network", "private_ip", "public_ip",
        "fqdn", "key_names", "security_groups", "tags", "created_at", "updated_at"]

Wait = Annotated[bool, typer.Option("--wait", help="Follow the state until it settles.")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]


def wait_for(st: CliState, ref: str, target: str | None, timeout: float,
             action: str | None = None) -> dict[str, Any] | None:
    """Poll until the instance reaches `target` (None: until it is gone). The error and
    paused states fail, and so does `action` when its reason says it failed (a bare-metal
    server's BMC that failed leaves it in the state its machine is in: it never reaches
    `target`, or is there already)."""
    client = st.client()
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    with err.status(f"waiting for {ref}...") as status:
        while time.monotonic() < deadline:
            try:
                last = client.get("/v1/instances/{}", ref)
            except CliError as e:
                if target is None and e.code == "unknown_instance":
                    return None
                raise
            assert last is not None
            status.update(f"{ref}: {last['state']}")
            if action is not None and last["state_reason"].startswith(f"{action} failed: "):
                raise CliError(f"{action}_failed",
                               f"instance {last.get('name', ref)}: {last['state_reason']}")
            if last["state"] == target:
                return last
            if last["state"] == "error":
                raise CliError(
                    "instance_error", f"instance {ref} is in error: {last['state_reason']}"
                )
            if last["state"] == "paused":  # settled until its cause is gone: say which
                raise CliError(
                    "instance_paused", f"instance {ref} is paused: {last['state_reason']}"
                )
            time.sleep(0.2)
    raise CliError(
        "timeout",
        f"instance {ref} did not become {target or 'deleted'} "
        f"within {timeout:g} s (now: {last['state'] if last else '?'})",
    )


def _show(st: CliState, data: dict[str, Any] | None) -> None:
    if data is not None:
        emit(st, data, SHOW)


@app.command()
def create(
    ctx: typer.Context,
    name: str,
    image: Annotated[str, typer.Option("--image", help="Image name (see `cumulo image list`).")],
    type_: Annotated[str | None, typer.Option("--type", help="Instance type.")] = None,
    vcpus: Annotated[int | None, typer.Option("--vcpus", help="Custom size: vCPUs.")] = None,
    ram: Annotated[int | None, typer.Option("--ram", help="Custom size: RAM in MiB.")] = None,
    bandwidth: Annotated[int | None, typer.Option("--bandwidth", help="Mbit/s cap.")] = None,
    disk_size: Annotated[int | None, typer.Option("--disk-size", help="Boot disk GiB.")] = None,
    arch: Annotated[str, typer.Option("--arch", help="x86_64 or arm64.")] = "x86_64",
    zone: Annotated[str | None, typer.Option("--zone")] = None,
    user_data: Annotated[
        Path | None,
        typer.Option("--user-data", help="File given to the guest at boot (cloud-init)."),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE, repeatable.")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Key pair, repeatable.")] = None,
    security_group: Annotated[list[str] | None, typer.Option(
        "--security-group", help="Repeatable; default: the project's default group.")] = None,
    network: Annotated[str | None, typer.Option("--network", help="default: the zone's "
                                                "default network")] = None,
    private_ip: Annotated[str | None, typer.Option("--private-ip")] = None,
    placement_group: Annotated[str | None, typer.Option(
        "--placement-group", help="Place it by this group's rule (spread or cluster).")] = None,
    tenancy: Annotated[str | None, typer.Option(
        "--tenancy", help="shared (default), or dedicated: on a host dedicated to the "
        "project.")] = None,
    dedicated_host: Annotated[str | None, typer.Option(
        "--dedicated-host", help="On this dedicated host of the project (its id).")] = None,
    wait: Wait = False,
    timeout: Timeout = 600.0,
) -> None:
    """Create an instance and start it."""
    st = state(ctx)
    body: dict[str, Any] = {
        "name": name,
        "image": image,
        "arch": arch,
        "type": type_,
        "vcpus": vcpus,
        "ram_mib": ram,
        "bandwidth_mbps": bandwidth,
        "disk_gib": disk_size,
        "zone": zone,
        "tags": {},
        "keys": key or [],
        "security_groups": security_group or [],
        "network": network,
        "private_ip": private_ip,
    }
    if placement_group is not None:
        body["placement_group"] = placement_group
    if tenancy is not None:
        body["tenancy"] = tenancy
    if dedicated_host is not None:
        body["dedicated_host"] = dedicated_host
    if user_data is not None:
        try:
            raw = user_data.read_bytes()
        except OSError as e:
            raise CliError("invalid_user_data", f"cannot read {user_data}: {e.strerror}") from e
        if len(raw) > MAX_USER_DATA_BYTES:
            raise CliError(
                "user_data_too_large", f"{user_data} is {len(raw)} bytes; the limit is 64 KiB"
            )
        body["user_data"] = base64.b64encode(raw).decode()
    for item in tag or []:
        tag_key, sep, value = item.partition("=")
        if not sep:
            raise CliError("invalid_tag", f"tag {item!r} is not KEY=VALUE")
        body["tags"][tag_key] = value
    # One token per command: if the answer is lost (an API process dies mid-request), the
    # client sends the create again, to the next API, and gets the instance made, once.
    body["client_token"] = secrets.token_hex(16)
    created = st.client().post("/v1/instances", json=body, idempotent=True)
    _show(st, wait_for(st, created["id"], "running", timeout) if wait else created)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the project's instances."""
    st = state(ctx)
    emit(st, st.client().get("/v1/instances"), COLUMNS)


@app.command()
def show(ctx: typer.Context, name: str) -> None:
    """Show one instance."""
    st = state(ctx)
    _show(st, st.client().get("/v1/instances/{}", name))


def _action(
    ctx: typer.Context, name: str, action: str, target: str | None, wait: bool, timeout: float
) -> None:
    st = state(ctx)
    client = st.client()
    if action == "delete":
        result = client.delete("/v1/instances/{}", name)
    else:
        result = client.post("/v1/instances/{}/{}", name, action)
    if wait:
        result = wait_for(st, result["id"], target, timeout,
                          None if action == "delete" else action)
        if result is None:
            if st.json:
                emit(st, {"name": name, "state": "deleted"}, ["name", "state"])
            else:
                out.print(f"instance {name} deleted")
            return
    _show(st, result)


@app.command()
def start(ctx: typer.Context, name: str, wait: Wait = False, timeout: Timeout = 600.0) -> None:
    """Start a stopped instance."""
    _action(ctx, name, "start", "running", wait, timeout)


@app.command()
def stop(ctx: typer.Context, name: str, wait: Wait = False, timeout: Timeout = 600.0) -> None:
    """Power off (ACPI, then by force after the host's timeout)."""
    _action(ctx, name, "stop", "stopped", wait, timeout)


@app.command()
def reboot(ctx: typer.Context, name: str, wait: Wait = False, timeout: Timeout = 600.0) -> None:
    """Reset a running instance."""
    _action(ctx, name, "reboot", "running", wait, timeout)


@app.command()
def delete(ctx: typer.Context, name: str, wait: Wait = False, timeout: Timeout = 600.0) -> None:
    """Delete an instance and its boot disk."""
    _action(ctx, name, "delete", None, wait, timeout)


@app.command("console-log")
def console_log(ctx: typer.Context, name: str) -> None:
    """Print the instance's serial console output."""
    st = state(ctx)
    text = st.client().get("/v1/instances/{}/console", name)
    if st.json:
        emit(st, {"name": name, "console": text}, ["name", "console"])
    else:
        out.out(text, end="", highlight=False)
