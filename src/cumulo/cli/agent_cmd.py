"""`cumulo agent`: run a host agent on a hypervisor host that joins a cloud over the network.

The first start trades the join token for the host's own token (kept in the state dir, 0600);
later starts use that token and need no join token.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import httpx
import typer

from cumulo.allinone.paths import write_private
from cumulo.cli.client import CliError
from cumulo.config import LocalHost
from cumulo.domain.arch import Arch
from cumulo.domain.validation import dns_label

DEFAULT_STATE_DIR = Path("/var/lib/cumulo-agent")


def _defaults() -> LocalHost:
    return LocalHost()


def _join(api: str, join_token: str, name: str, zone: str) -> str:
    """The host token, from the first API (of a comma-separated list) that answers."""
    r: httpx.Response | None = None
    error: Exception | str = "no URL given"
    for url in (u.strip() for u in api.split(",") if u.strip()):
        try:
            r = httpx.post(f"{url.rstrip('/')}/v1/agent/join", timeout=30.0,
                           json={"join_token": join_token, "name": name, "zone": zone})
            break
        except httpx.TransportError as e:
            error = e
    if r is None:
        raise CliError("unreachable", f"cannot reach the cumulo API at {api}: {error}")
    if r.status_code != 201:
        try:
            body = r.json()
            code, detail = str(body.get("code", r.status_code)), str(body.get("detail", ""))
        except ValueError:
            code, detail = str(r.status_code), r.text.strip()
        raise CliError(code, detail)
    token: str = r.json()["host_token"]
    return token


def _listen_address(value: str) -> str:
    """IP:PORT (an IPv4 address), as uvicorn will bind it."""
    ip, _, port = value.rpartition(":")
    try:
        ipaddress.IPv4Address(ip)
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(port)
    except ValueError:
        raise CliError("invalid_input", f"--metrics-listen {value!r}: give IP:PORT, e.g. "
                                        "127.0.0.1:9751") from None
    return value


def agent(
    api: Annotated[str, typer.Option("--api", help="The cloud's API URL (several, comma-"
                                     "separated: they are tried in turn).")],
    zone: Annotated[str, typer.Option("--zone", help="The zone this host is in.")],
    join_token: Annotated[
        str | None,
        typer.Option("--join-token", envvar="CUMULO_JOIN_TOKEN",
                     help="From `cumulo host join-token create` (first start only)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Host name (default: "
                                             "this machine's name).")] = None,
    state_dir: Annotated[Path, typer.Option("--state-dir", help="The host's files.")] =
        DEFAULT_STATE_DIR,
    underlay_ip: Annotated[
        str | None, typer.Option("--underlay-ip", help="This host's address on the underlay.")
    ] = None,
    edge_ip: Annotated[
        str | None, typer.Option("--edge-ip", help="The edge's address on the underlay: its "
                                 "packets are let in to what instances' rules allow.")
    ] = None,
    storage: Annotated[bool, typer.Option(
        "--storage", help="A storage host: its zone's new volumes are stored on such hosts.")
    ] = False,
    driver: Annotated[str, typer.Option("--driver", help="qemu or fake")] = "qemu",
    accel: Annotated[str, typer.Option("--accel", help="auto, kvm or tcg")] = "auto",
    vcpus: Annotated[int | None, typer.Option("--vcpus", min=1)] = None,
    ram_mib: Annotated[int | None, typer.Option("--ram-mib", min=1)] = None,
    metrics_listen: Annotated[str | None, typer.Option(
        "--metrics-listen", help="IP:PORT of this agent's Prometheus /metrics.")] = None,
    metrics_token: Annotated[str, typer.Option(
        "--metrics-token", envvar="CUMULO_METRICS_TOKEN",
        help="A scrape of /metrics must carry it (Bearer).")] = "",
) -> None:
    """Run this machine's host agent in the foreground (joins the cloud on first start)."""
    from cumulo.agent.main import AgentConfig, main

    defaults = _defaults()
    host = dns_label(name or defaults.name, "host name")
    if driver not in ("qemu", "fake") or accel not in ("auto", "kvm", "tcg"):
        raise CliError("invalid_input", "--driver is qemu or fake; --accel auto, kvm or tcg")
    if underlay_ip is not None or edge_ip is not None:
        from cumulo.services.networks import check_ip

        if underlay_ip is None:
            raise CliError("invalid_input", "--edge-ip needs --underlay-ip (the edge reaches "
                                            "instances over the underlay)")
        underlay_ip = check_ip(underlay_ip)
        edge_ip = check_ip(edge_ip) if edge_ip is not None else None
    if metrics_listen is not None:
        metrics_listen = _listen_address(metrics_listen)
    state_dir = state_dir.absolute()
    token_file = state_dir / "agent.token"
    if token_file.exists():
        token = token_file.read_text().strip()
    elif join_token is None:
        raise CliError("no_token", f"{token_file} does not exist: the first start needs "
                                   "--join-token (see `cumulo host join-token create`)")
    else:
        token = _join(api, join_token, host, zone)
        write_private(token_file, token + "\n")
    cfg = AgentConfig(
        api_url=api, token=token, host_dir=state_dir, name=host, zone=zone,
        vcpus=vcpus or defaults.vcpus, ram_mib=ram_mib or defaults.ram_mib, driver=driver,
        accel=accel, architectures=[Arch.X86_64, Arch.ARM64], underlay_ip=underlay_ip,
        edge_ip=edge_ip,
        metrics_listen=metrics_listen or "", metrics_token=metrics_token,
        qemu_uid_base=defaults.qemu_uid_base, qemu_uid_count=defaults.qemu_uid_count,
        storage=storage,
    )
    raise typer.Exit(main(cfg))



