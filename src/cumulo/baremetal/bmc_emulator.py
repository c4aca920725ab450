"""A Redfish BMC emulator in front of QEMU machines: the "physical" servers of tests and of
`cumulo up --baremetal-nodes N`.

It serves the standard endpoints a Redfish client (sushy) uses to manage a server: the service
root, Systems (PowerState, Boot override, ProcessorSummary, MemorySummary, Processors,
SimpleStorage), ComputerSystem.Reset (On, ForceOn, ForceOff, GracefulShutdown, ForceRestart,
GracefulRestart), Managers with VirtualMedia insert/eject (served under the System too), with
HTTP basic auth on everything but the service root (as the DMTF spec has it). Power actions
start and stop a real QEMU (see emulated_machine). It listens on loopback only: a BMC network
is a management network, and this one is never reachable from outside the machine.

Run: python -m cumulo.baremetal.bmc_emulator --state-dir D --node ID:VCPUS:RAM_MIB:DISK_GIB
     [--node ...] [--listen 127.0.0.1:0] [--username U --password-file F] [--port-file F]
     [--provision-port PORT] [--port-netns NETNS] [--parent-pid PID]
"""

from __future__ import annotations

import argparse
import base64
import hmac
import ipaddress
import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cumulo.agent.host_lock import exit_with_parent
from cumulo.baremetal import redfish_resources as rf
from cumulo.baremetal.emulated_machine import EmulatedMachine, MachineError, MachineSpec

MEDIA_MAX_BYTES = 1024**3
_SYSTEM_ID = re.compile(r"^[A-Za-z0-9_-]{1,63}\Z")
_NODE_ARG = re.compile(r"^([A-Za-z0-9_-]{1,63}):([0-9]{1,3}):([0-9]{2,7}):([0-9]{1,5})\Z")


class Emulator:
    """The machines and the credentials; the HTTP handler below maps requests onto them."""

    def __init__(self, machines: list[EmulatedMachine], username: str, password: str) -> None:
        self.machines = {m.spec.system_id: m for m in machines}
        self.locks = {sid: threading.Lock() for sid in self.machines}
        self.username, self.password = username, password

    def authorized(self, header: str | None) -> bool:
        if not self.username:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(f"{user}:{pw}", f"{self.username}:{self.password}")

    def reset(self, m: EmulatedMachine, reset_type: str) -> None:
        with self.locks[m.spec.system_id]:
            if reset_type in ("On", "ForceOn"):
                m.power_on()
            elif reset_type == "ForceOff":
                m.force_off()
            elif reset_type == "GracefulShutdown":
                m.graceful_shutdown()
            elif reset_type in ("ForceRestart", "GracefulRestart"):
                m.force_restart()
            else:
                raise MachineError(f"unsupported ResetType {reset_type!r}")

    def insert(self, m: EmulatedMachine, url: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise MachineError("Image must be an http:// or https:// URL")
        content = _download(url)
        with self.locks[m.spec.system_id]:
            m.insert_media(url, content)

    def stop_all(self) -> None:
        for m in self.machines.values():
            with self.locks[m.spec.system_id]:
                m.force_off()


def _download(url: str) -> bytes:
    try:
        with httpx.stream("GET", url, timeout=30, follow_redirects=False) as r:
            if r.status_code != 200:
                raise MachineError(f"fetching the media answered HTTP {r.status_code}")
            chunks, size = [], 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > MEDIA_MAX_BYTES:
                    raise MachineError("the media is larger than 1 GiB")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as e:
        raise MachineError(f"fetching the media failed: {e}") from e


def app(emu: Emulator) -> Starlette:
    """The emulator's HTTP side: every request goes to `route` (in a worker thread: a power
    action or a media download blocks)."""

    async def endpoint(request: Request) -> Response:
        path = request.url.path.rstrip("/")
        body = _body(await request.body())
        if body is None:
            return _json(400, rf.error("the body is not a JSON object", "Base.1.0.MalformedJSON"))
        if path != rf.V1 and not emu.authorized(request.headers.get("authorization")):
            return _json(401, rf.error("authentication required",
                                       "Base.1.0.InsufficientPrivilege"),
                         {"WWW-Authenticate": 'Basic realm="cumulo-bmc"'})
        try:
            status, doc = await run_in_threadpool(route, emu, request.method, path, body)
        except MachineError as e:
            status, doc = 400, rf.error(str(e), "Base.1.0.ActionNotSupported")
        return _json(status, doc)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST", "PATCH"])])


def _body(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return {}
    if len(raw) > 65536:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _json(status: int, doc: dict[str, Any] | None,
          headers: dict[str, str] | None = None) -> Response:
    if doc is None:
        return Response(status_code=status, headers={"OData-Version": "4.0"})
    return JSONResponse(doc, status_code=status,
                        headers={"OData-Version": "4.0", **(headers or {})})


def route(emu: Emulator, method: str, path: str,
          body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, document) for one request; MachineError for a refused action."""
    if path == rf.V1 and method == "GET":
        return 200, rf.root("7c0e9b6e-7f3a-4c1e-9d2b-4c756d756c6f")
    parts = path[len(rf.V1) + 1:].split("/") if path.startswith(rf.V1 + "/") else []
    if parts in (["Systems"], ["Managers"]) and method == "GET":
        kind = "ComputerSystemCollection" if parts[0] == "Systems" else "ManagerCollection"
        return 200, rf.collection(path, kind, [f"{path}/{sid}" for sid in emu.machines])
    if len(parts) < 2 or parts[0] not in ("Systems", "Managers"):
        return 404, rf.error(f"no resource {path}", "Base.1.0.ResourceMissingAtURI")
    m = emu.machines.get(parts[1])
    if m is None:
        return 404, rf.error(f"no resource {path}", "Base.1.0.ResourceMissingAtURI")
    base = f"{rf.V1}/{parts[0]}/{parts[1]}"
    rest = parts[2:]
    if rest[:1] == ["VirtualMedia"]:
        return _media(emu, m, method, base, rest[1:], body)
    if parts[0] == "Managers":
        return (200, rf.manager(m)) if not rest and method == "GET" else _missing(path)
    return _system(emu, m, method, rest, body, path)


def _system(emu: Emulator, m: EmulatedMachine, method: str, rest: list[str],
            body: dict[str, Any], path: str) -> tuple[int, dict[str, Any] | None]:
    if not rest and method == "GET":
        return 200, rf.system(m)
    if not rest and method == "PATCH":
        boot = body.get("Boot")
        if not isinstance(boot, dict):
            raise MachineError("only Boot can be changed")
        with emu.locks[m.spec.system_id]:
            m.set_boot(boot.get("BootSourceOverrideTarget"),
                       boot.get("BootSourceOverrideEnabled"))
        return 204, None
    if rest == ["Actions", "ComputerSystem.Reset"] and method == "POST":
        emu.reset(m, str(body.get("ResetType")))
        return 204, None
    sub = {("Processors",): rf.collection(f"{path}", "ProcessorCollection", [f"{path}/CPU0"]),
           ("Processors", "CPU0"): rf.processor(m),
           ("SimpleStorage",): rf.collection(f"{path}", "SimpleStorageCollection",
                                             [f"{path}/1"]),
           ("SimpleStorage", "1"): rf.simple_storage(m),
           ("EthernetInterfaces",): rf.collection(f"{path}", "EthernetInterfaceCollection",
                                                  [f"{path}/{rf.NIC_ID}"]),
           ("EthernetInterfaces", rf.NIC_ID): rf.ethernet_interface(m)}.get(tuple(rest))
    return (200, sub) if sub is not None and method == "GET" else _missing(path)


def _media(emu: Emulator, m: EmulatedMachine, method: str, base: str, rest: list[str],
           body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    path = f"{base}/VirtualMedia"
    if not rest and method == "GET":
        return 200, rf.collection(path, "VirtualMediaCollection", [f"{path}/{rf.MEDIA_ID}"])
    if rest[:1] != [rf.MEDIA_ID]:
        return _missing(path)
    if rest[1:] == [] and method == "GET":
        return 200, rf.virtual_media(m, base)
    if rest[1:] == ["Actions", "VirtualMedia.InsertMedia"] and method == "POST":
        emu.insert(m, str(body.get("Image") or ""))
        return 204, None
    if rest[1:] == ["Actions", "VirtualMedia.EjectMedia"] and method == "POST":
        with emu.locks[m.spec.system_id]:
            m.eject_media()
        return 204, None
    return _missing(f"{path}/{'/'.join(rest)}")


def _missing(path: str) -> tuple[int, dict[str, Any]]:
    return 404, rf.error(f"no resource {path} (or not with this method)",
                         "Base.1.0.ResourceMissingAtURI")


class Served:
    """An emulator's HTTP server on a loopback port, run by `run` (blocks) until `stop`."""

    def __init__(self, emu: Emulator, host: str, port: int) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the BMC emulator listens on loopback only, not {host}")
        self.emulator = emu
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app(emu), log_level="warning",
                                                    access_log=False, lifespan="off"))

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True


def serve(emu: Emulator, host: str, port: int) -> Served:
    """An HTTP server for `emu` on `host` (loopback only) and `port` (0: any free one)."""
    return Served(emu, host, port)


def parse_node(text: str) -> MachineSpec:
    m = _NODE_ARG.match(text)
    if m is None:
        raise ValueError(f"--node {text!r}: expected ID:VCPUS:RAM_MIB:DISK_GIB")
    return MachineSpec(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cumulo-bmc-emulator", description=__doc__)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--node", action="append", required=True, type=parse_node)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--username", default="")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--port-file", type=Path, help="where to write the port once listening")
    p.add_argument("--provision-port", type=int,
                   help="the API's loopback port the machines' provisioning NIC reaches")
    p.add_argument("--port-netns",
                   help="the network namespace of the host the machines' NICs are cabled to "
                        "(their switch port: a tap there, when they boot their disk)")
    p.add_argument("--parent-pid", type=int, help="stop when this process (cumulo up) dies")
    a = p.parse_args(argv)
    if a.parent_pid is not None and not exit_with_parent(a.parent_pid):
        return
    host, _, port = a.listen.rpartition(":")
    password = a.password_file.read_text().strip() if a.password_file else ""
    emu = Emulator([EmulatedMachine(spec, a.state_dir, a.provision_port, a.port_netns)
                    for spec in a.node], a.username, password)
    served = serve(emu, host, int(port))
    if a.port_file:
        tmp = a.port_file.with_suffix(".tmp")
        tmp.write_text(str(served.port))
        tmp.replace(a.port_file)
    try:
        served.run()  # until SIGTERM or SIGINT (uvicorn's handlers)
    finally:
        emu.stop_all()  # the machines go with their emulator (no QEMU is left behind)


if __name__ == "__main__":
    main()
