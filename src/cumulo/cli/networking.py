"""`cumulo keypair|security-group|network|ip ...` and `cumulo ssh`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from cumulo.cli.client import Client, CliError
from cumulo.cli.output import CliState, emit, out, state

keypair_app = typer.Typer(help="SSH key pairs.", no_args_is_help=True)
group_app = typer.Typer(help="Security groups (stateful ingress firewall).", no_args_is_help=True)
network_app = typer.Typer(help="Private networks.", no_args_is_help=True)
ip_app = typer.Typer(help="Public IPs.", no_args_is_help=True)

KEY_COLUMNS = ["name", "fingerprint", "created_at"]
GROUP_COLUMNS = ["name", "description", "rules", "instances"]
NET_COLUMNS = ["name", "zone", "cidr", "gateway", "is_default", "instances"]
IP_COLUMNS = ["ip", "instance", "auto", "created_at"]


def keys_dir() -> Path:
    """Private keys made by `keypair create` are kept beside the client config (0600)."""
    cfg = os.environ.get("CUMULO_CONFIG")
    base = Path(cfg).parent if cfg else Path.home() / ".config" / "cumulo"
    return base / "keys"


def _done(st: CliState, what: str, data: dict[str, Any]) -> None:
    if st.json:
        emit(st, data, list(data))
    else:
        out.print(what)


@keypair_app.command("import")
def keypair_import(ctx: typer.Context, name: str,
                   public_key: Annotated[Path, typer.Option("--public-key",
                                                            help="OpenSSH public key file")]
                   ) -> None:
    """Import an existing OpenSSH public key."""
    st = state(ctx)
    try:
        text = public_key.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError("invalid_key", f"cannot read {public_key}: {e}") from e
    emit(st, st.client().post("/v1/keypairs", json={"name": name, "public_key": text}),
         [*KEY_COLUMNS, "public_key"])


@keypair_app.command("create")
def keypair_create(ctx: typer.Context, name: str) -> None:
    """Create a key pair; the private key is shown once (and kept for `cumulo ssh`)."""
    st = state(ctx)
    made = st.client().post("/v1/keypairs", json={"name": name})
    path = keys_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made["private_key"])
    made["private_key_file"] = str(path)
    if st.json:
        emit(st, made, [])
    else:
        out.print(made["private_key"], end="", highlight=False)
        out.print(f"# saved to {path}; this is the only time the private key is shown")


@keypair_app.command("list")
def keypair_list(ctx: typer.Context) -> None:
    """List key pairs."""
    st = state(ctx)
    emit(st, st.client().get("/v1/keypairs"), KEY_COLUMNS)


@keypair_app.command("delete")
def keypair_delete(ctx: typer.Context, name: str) -> None:
    """Delete a key pair (instances keep the keys they booted with)."""
    st = state(ctx)
    st.client().delete("/v1/keypairs/{}", name)
    _done(st, f"key pair {name} deleted", {"name": name, "deleted": True})


def _group_rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g | {"rules": [f"{r['id']}:{r['proto']}/{r['port'] or '*'} from {r['cidr']}"
                           for r in g["rules"]]} for g in groups]


@group_app.command("create")
def group_create(ctx: typer.Context, name: str,
                 description: Annotated[str, typer.Option("--description")] = "") -> None:
    """Create an empty security group (nothing in until rules are added)."""
    st = state(ctx)
    g = st.client().post("/v1/security-groups", json={"name": name, "description": description})
    emit(st, g if st.json else _group_rows([g])[0], GROUP_COLUMNS)


@group_app.command("list")
def group_list(ctx: typer.Context) -> None:
    """List security groups with their rules."""
    st = state(ctx)
    groups = st.client().get("/v1/security-groups")
    emit(st, groups if st.json else _group_rows(groups), GROUP_COLUMNS)


@group_app.command("delete")
def group_delete(ctx: typer.Context, name: str) -> None:
    """Delete an unused security group."""
    st = state(ctx)
    st.client().delete("/v1/security-groups/{}", name)
    _done(st, f"security group {name} deleted", {"name": name, "deleted": True})


@group_app.command("rule-add")
def rule_add(
    ctx: typer.Context, group: str,
    proto: Annotated[str, typer.Option("--proto", help="tcp, udp or icmp")],
    port: Annotated[int | None, typer.Option("--port", help="default: every port")] = None,
    cidr: Annotated[str, typer.Option("--cidr", help="allowed sources")] = "0.0.0.0/0",
) -> None:
    """Allow traffic in; running instances get it within seconds."""
    st = state(ctx)
    g = st.client().post("/v1/security-groups/{}/rules", group,
                         json={"proto": proto, "port": port, "cidr": cidr})
    emit(st, g if st.json else _group_rows([g])[0], GROUP_COLUMNS)


@group_app.command("rule-remove")
def rule_remove(ctx: typer.Context, group: str, rule: str) -> None:
    """Remove a rule (by id, see `security-group list`)."""
    st = state(ctx)
    g = st.client().delete("/v1/security-groups/{}/rules/{}", group, rule)
    emit(st, g if st.json else _group_rows([g])[0], GROUP_COLUMNS)


@network_app.command("create")
def network_create(ctx: typer.Context, name: str,
                   cidr: Annotated[str, typer.Option("--cidr", help="e.g. 192.168.10.0/24")],
                   zone: Annotated[str | None, typer.Option("--zone")] = None) -> None:
    """Create a private network."""
    st = state(ctx)
    emit(st, st.client().post("/v1/networks", json={"name": name, "cidr": cidr, "zone": zone}),
         NET_COLUMNS)


@network_app.command("list")
def network_list(ctx: typer.Context) -> None:
    """List the project's networks."""
    st = state(ctx)
    emit(st, st.client().get("/v1/networks"), NET_COLUMNS)


@network_app.command("delete")
def network_delete(ctx: typer.Context, name: str,
                   zone: Annotated[str | None, typer.Option("--zone")] = None) -> None:
    """Delete an unused network."""
    st = state(ctx)
    st.client().delete("/v1/networks/{}", name, params={"zone": zone} if zone else None)
    _done(st, f"network {name} deleted", {"name": name, "deleted": True})


@ip_app.command("allocate")
def ip_allocate(ctx: typer.Context) -> None:
    """Allocate a public IP to the project."""
    st = state(ctx)
    emit(st, st.client().post("/v1/public-ips"), IP_COLUMNS)


@ip_app.command("attach")
def ip_attach(
    ctx: typer.Context, ip: str, instance: str,
    reassociate: Annotated[bool, typer.Option(
        "--reassociate", help="move it even if attached to another instance, and replace "
                              "the instance's current public IP")] = False,
) -> None:
    """Attach a public IP to an instance."""
    st = state(ctx)
    emit(st, st.client().post("/v1/public-ips/{}/attach", ip,
                              json={"instance": instance, "reassociate": reassociate}),
         IP_COLUMNS)


@ip_app.command("detach")
def ip_detach(ctx: typer.Context, ip: str) -> None:
    """Detach a public IP (it stays allocated)."""
    st = state(ctx)
    emit(st, st.client().post("/v1/public-ips/{}/detach", ip), IP_COLUMNS)


@ip_app.command("release")
def ip_release(ctx: typer.Context, ip: str) -> None:
    """Give a detached public IP back."""
    st = state(ctx)
    st.client().delete("/v1/public-ips/{}", ip)
    _done(st, f"public IP {ip} released", {"ip": ip, "released": True})


@ip_app.command("list")
def ip_list(ctx: typer.Context) -> None:
    """List the project's public IPs."""
    st = state(ctx)
    emit(st, st.client().get("/v1/public-ips"), IP_COLUMNS)


_FQDN = re.compile(r"(?i)[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+\.?")


def _instance(client: Client, name: str) -> Any:
    """The instance called `name`, or whose FQDN it is (a name has no dot; an FQDN is DNS
    labels joined by dots). Anything else goes to the API as a name, which judges it."""
    if not _FQDN.fullmatch(name):
        return client.get("/v1/instances/{}", name)
    want = name.rstrip(".").lower()
    for inst in client.get("/v1/instances"):
        if str(inst.get("fqdn", "")).lower() == want:
            return inst
    raise CliError("unknown_instance", f"no instance of yours has the FQDN {name}")


def ssh(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="instance name or FQDN")],
    command: Annotated[list[str] | None, typer.Argument(help="after --: remote command")] = None,
    user: Annotated[str | None, typer.Option("--user", "-l", help="default: the image's "
                                             "default user")] = None,
    identity: Annotated[Path | None, typer.Option("--identity", "-i")] = None,
) -> None:
    """Log in to an instance over SSH (at its public IP); returns the remote exit status."""
    st = state(ctx)
    client = st.client()
    inst = _instance(client, name)
    if inst["state"] != "running":
        raise CliError("invalid_state", f"instance {name} is {inst['state']}, not running")
    if not inst.get("public_ip"):
        raise CliError("no_public_ip", f"instance {name} has no public IP")
    login = user or client.get("/v1/images/{}", inst['image'])["default_user"]
    argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
    identities = [identity] if identity else [keys_dir() / k for k in inst["key_names"]]
    for key in identities:
        if key.is_file():
            argv += ["-i", str(key)]
    remote = list(command or [])
    if remote[:1] == ["--"]:  # click keeps the separator when interspersed args are off
        remote = remote[1:]
    argv += ["--", f"{login}@{inst['public_ip']}", *remote]
    try:
        raise typer.Exit(subprocess.call(argv))
    except FileNotFoundError:
        raise CliError("no_ssh", "the ssh client is missing (apt-get install "
                                 "openssh-client)") from None
