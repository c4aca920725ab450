"""`cumulo image list|show|import|create-from-instance|delete`.

A local FILE is streamed to the API (PUT /v1/images/{name}/upload): the server never opens a
path the user names. A URL is handed to the API, which downloads it itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cumulo.cli.client import CliError, segment
from cumulo.cli.output import emit, out, state
from cumulo.domain.validation import DEFAULT_MIN_RAM_MIB

images_app = typer.Typer(help="Operating system images.", no_args_is_help=True)

COLUMNS = ["name", "project", "os", "default_user", "architectures", "variants"]
# Imports are checked and converted before the API answers: allow them time.
LONG_TIMEOUT = httpx.Timeout(30.0, read=3600.0, write=3600.0)
CHUNK = 1 << 20


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


@images_app.command("list")
def image_list(ctx: typer.Context) -> None:
    """List images visible to the project (its own and the public ones)."""
    st = state(ctx)
    emit(
        st,
        st.client().get("/v1/images"),
        ["name", "architectures", "default_user", "project", "os"],
    )


@images_app.command("show")
def image_show(ctx: typer.Context, name: str) -> None:
    """Show one image (the project's own wins over a public one of the same name)."""
    st = state(ctx)
    emit(st, st.client().get("/v1/images/{}", name), COLUMNS)


@images_app.command("import")
def image_import(
    ctx: typer.Context,
    name: str,
    source: Annotated[str, typer.Argument(metavar="FILE_OR_URL", help="qcow2 or raw image")],
    arch: Annotated[str, typer.Option("--arch", help="x86_64 or arm64")],
    default_user: Annotated[
        str, typer.Option("--default-user", help="User cloud-init gives the SSH keys to.")
    ] = "root",
    boot: Annotated[
        str | None,
        typer.Option("--boot", help="bios or uefi (default: bios on x86_64, uefi on arm64)."),
    ] = None,
    os_name: Annotated[str, typer.Option("--os", help="Free-text OS description.")] = "",
    public: Annotated[
        bool, typer.Option("--public", help="Make it a public image (admins only).")
    ] = False,
    min_ram: Annotated[
        int, typer.Option("--min-ram", help="The least RAM (MiB) an instance of it may have.")
    ] = DEFAULT_MIN_RAM_MIB,
) -> None:
    """Import an image from a local FILE (uploaded) or an http(s) URL (fetched by the API)."""
    st = state(ctx)
    segment(name)  # '', '.' or '..': refused before a byte is read or sent
    if source.startswith(("http://", "https://")):
        body = {"name": name, "url": source, "arch": arch, "boot": boot,
                "default_user": default_user, "os": os_name, "public": public,
                "min_ram_mib": min_ram}
        view = st.client().post("/v1/images", json=body, timeout=LONG_TIMEOUT)
    elif "://" in source:
        raise CliError("invalid_url", f"{source}: only http:// and https:// URLs can be imported")
    else:
        path = Path(source)
        if not path.is_file():
            raise CliError("no_such_file", f"{source}: no such file (or not a regular file)")
        size = path.stat().st_size
        if not st.json:
            out.print(f"uploading {path} ({size} bytes)...")
        view = st.client().put(
            "/v1/images/{}/upload", name,
            timeout=LONG_TIMEOUT,
            params={"arch": arch, "boot": boot, "default_user": default_user,
                    "os": os_name, "public": public or None, "min_ram_mib": min_ram},
            content=_file_chunks(path),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    emit(st, view, COLUMNS)


@images_app.command("create-from-instance")
def image_from_instance(ctx: typer.Context, name: str, instance: str) -> None:
    """Make image NAME from the boot disk of a stopped INSTANCE."""
    st = state(ctx)
    view = st.client().post("/v1/images/from-instance", json={"name": name, "instance": instance},
                            timeout=LONG_TIMEOUT)
    emit(st, view, COLUMNS)


@images_app.command("delete")
def image_delete(
    ctx: typer.Context,
    name: str,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Delete only this architecture's variant.")
    ] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Delete the public image of that name (admins).")
    ] = False,
) -> None:
    """Delete an image (refused while instances use it)."""
    st = state(ctx)
    params: dict[str, Any] = {}
    if arch:
        params["arch"] = arch
    if public:
        params["public"] = "true"
    st.client().delete("/v1/images/{}", name, params=params)
    if st.json:
        emit(st, {"name": name, "deleted": True}, ["name"])
    else:
        out.print(f"image {name} deleted")
