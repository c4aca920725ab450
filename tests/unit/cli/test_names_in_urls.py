"""A name or id typed on the command line is one segment of the URL the CLI asks for, in every
command: `cumulo instance delete ../volumes/trav` asked for DELETE /v1/volumes/trav (the HTTP
client resolved the dot segment) and deleted a volume.

Every command of the Typer app with a NAME-like argument (so a new one is covered without a
word here) is run through `cumulo`'s entry point against the API served over real HTTP. Each
is run once with a plain name, then with each hostile one in its place; the API records the
path of every request, cut into segments as it routes them. A hostile run must ask for the
plain run's URLs with only the name changed (or fewer of them, as it fails sooner), refuse
'', '.' and '..' before any request (error[invalid_name]), fail in one line, and change
nothing in the database or the image store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from cumulo.api.app import create_app
from cumulo.api.server import Server
from cumulo.services import hosts
from cumulo.services.context import Services
from tests.cli_commands import commands, run
from tests.conftest import free_port, stored_state

PLAIN = "plain-1"
HOSTILE = ["..", ".", "", "/", "%2f", "?", "#", "../volumes/trav", "../zones", "a/..", "x?y=1",
           "x#y", "%2e%2e"]
REFUSED_BEFORE_ANY_REQUEST = {"", ".", ".."}
# Arguments that are not names of resources: FILE_OR_URL of `image import`, the remote
# command of `cumulo ssh` (optional), the KEY=VALUE pairs of `project quota set`.
NOT_NAMES = {"source", "command", "limits"}
# Values for the required options (a new required option must be added here).
PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
              " test\n")

Request = tuple[str, list[str]]


class Served:
    def __init__(self, svc: Services, url: str, token: str, calls: list[Request],
                 tmp: Path) -> None:
        self.svc, self.url, self.token, self.calls, self.tmp = svc, url, token, calls, tmp

    def options(self) -> dict[str, str]:
        key = self.tmp / "key.pub"
        key.write_text(PUBLIC_KEY)
        return {"--image": "tiny", "--size": "1", "--cidr": "10.99.0.0/24", "--proto": "tcp",
                "--arch": "x86_64", "--public-key": str(key), "--strategy": "spread",
                # baremetal node enroll: an unknown zone, so that no node is enrolled (the
                # conductor would move it while this test compares the stored state).
                "--zone": "nowhere-1", "--redfish": "http://127.0.0.1:9", "--system": "n1",
                "--vcpus": "1", "--ram": "1024", "--disk": "1"}


@pytest.fixture
def served(svc: Services, admin_token: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The API on a loopback port, with a volume `trav`, an instance, a network, a key pair,
    a security group and a public IP; and the CLI pointed at it."""
    svc.image_store = tmp_path / "images"
    # No agent heartbeats here: the API's sweep would mark the host down (a change of the
    # stored state) once the walk over every command outlasts HOST_DOWN_AFTER.
    monkeypatch.setattr(hosts, "HOST_DOWN_AFTER", timedelta(days=1))
    app = create_app(svc)
    calls: list[Request] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # As sent, one segment at a time: what the URL meant, before any routing.
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            calls.append((scope["method"], [unquote(s) for s in raw.decode().split("/")]))
        await app(scope, receive, send)

    port = free_port()
    server = Server(uvicorn.Config(recording, host="127.0.0.1", port=port, log_level="warning"),
                    svc.notifier)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"},
                      timeout=30) as http:
        for _ in range(200):  # until it listens
            try:
                http.get("/healthz")
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        for path, body in [
            ("/v1/volumes", {"name": "trav", "size_gib": 1}),
            ("/v1/instances", {"name": "vm", "image": "tiny", "type": "t1.nano"}),
            ("/v1/networks", {"name": "lab", "cidr": "192.168.50.0/24"}),
            ("/v1/keypairs", {"name": "key"}),
            ("/v1/security-groups", {"name": "web"}),
            ("/v1/public-ips", None),
        ]:
            r = http.post(path, json=body)
            assert r.status_code in (201, 202), (path, r.text)
    config = tmp_path / "client.toml"
    config.write_text(f'url = "{url}"\ntoken = "{admin_token}"\n')
    monkeypatch.setenv("CUMULO_CONFIG", str(config))  # keys of `keypair create` go beside it
    try:
        yield Served(svc, url, admin_token, calls, tmp_path)
    finally:
        server.should_exit = True
        serving.join(10)


def _argv(path: list[str], command: Any, name_param: str, name: str,
          served: Served) -> list[str]:
    options = served.options()
    argv = list(path)
    for p in command.params:
        if p.param_type_name == "argument" and (p.required or p.name == name_param):
            if p.name == name_param:  # an optional name too: it is the one tried
                argv.append(name)
            elif p.name == "source":
                empty = served.tmp / "empty.img"
                empty.touch()
                argv.append(str(empty))
            else:
                argv.append("other-1")
        elif p.param_type_name == "option" and p.required:
            argv += [p.opts[0], options[p.opts[0]]]
    return argv


def _meant(requests: list[Request], name: str) -> list[Request]:
    """`requests` made for PLAIN as they must be for `name`: the same, PLAIN's segment now
    holding `name` (and nothing else changed)."""
    return [(m, [name if s == PLAIN else s for s in segs]) for m, segs in requests]


def test_every_name_is_one_path_segment_in_every_command(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    tried: set[str] = set()
    for path, command in commands():
        for p in command.params:
            if p.param_type_name != "argument" or p.name in NOT_NAMES:
                continue
            tried.add(" ".join(path))
            served.calls.clear()
            _, _, err = run(capsys, *_argv(path, command, p.name, PLAIN, served))
            # The API reads bodies strictly (no "1" for 1): what the CLI sends is well typed.
            assert not err.startswith("error[invalid_input]"), (path, err)
            plain = list(served.calls)
            before = stored_state(served.svc)
            for name in HOSTILE:
                served.calls.clear()
                argv = _argv(path, command, p.name, name, served)
                status, out, err = run(capsys, *argv)
                what = f"cumulo {' '.join(argv)!r}: {err!r} {out[:200]!r}"
                assert status != 0, what  # no such name can exist
                assert err.count("\n") == 1 and err.startswith("error["), what
                sent = list(served.calls)
                assert sent == _meant(plain, name)[:len(sent)], (what, sent, plain)
                in_url = [PLAIN in segs for _, segs in plain]
                if name in REFUSED_BEFORE_ANY_REQUEST and True in in_url:
                    # (as a field of a JSON body it is sent: the API judges it)
                    assert err.startswith("error[invalid_name]: "), what
                    assert True not in in_url[:len(sent)], what
            assert stored_state(served.svc) == before, f"cumulo {' '.join(path)} {p.name}"
    assert {"instance delete", "instance show", "volume attach", "image import", "ssh",
            "security-group rule-remove", "ip release", "snapshot delete"} <= tried
    assert len(tried) >= 30


def test_the_volume_trav_outlives_instance_delete_dotdot(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "instance", "delete", "../volumes/trav")
    assert status == 1 and err.startswith("error[invalid_name]: "), err
    status, out, _ = run(capsys, "-o", "json", "volume", "show", "trav")
    assert status == 0 and '"state": "creating"' in out
    status, out, err = run(capsys, "instance", "show", "../zones")
    assert status == 1 and "local-1a" not in out, (out, err)


@pytest.mark.parametrize("name", ["../x", ""])
def test_image_import_of_a_path_like_name_says_invalid_name(
    served: Served, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    image = served.tmp / "disk.img"
    image.write_bytes(b"\0" * 4096)
    status, _, err = run(capsys, "image", "import", name, str(image), "--arch", "x86_64")
    assert status == 1 and err.startswith("error[invalid_name]: "), err
