"""`cumulo host join-token create`: a one-time token a new hypervisor host joins with."""

from __future__ import annotations

from typing import Annotated

import typer

from cumulo.cli.output import emit, out, state

join_token_app = typer.Typer(help="Tokens new hosts join the cloud with (admin).",
                             no_args_is_help=True)


@join_token_app.command("create")
def join_token_create(
    ctx: typer.Context,
    zone: Annotated[str | None, typer.Option("--zone", help="The zone the host must join.")] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Valid for: 90s, 30m, 2h, 7d.")] = "1h",
) -> None:
    """Print a token valid for one registration: `cumulo agent --join-token TOKEN ...`."""
    st = state(ctx)
    made = st.client().post("/v1/hosts/join-tokens", json={"zone": zone, "ttl": ttl},
                            scoped=False)
    if st.json:
        emit(st, made, [])
        return
    out.print(made["token"])
    where = f"zone {made['zone']}" if made["zone"] else "any zone"
    out.print(f"(one host, {where}, until {made['expires_at']}; shown once)", style="dim")
