"""The serial console's WebSocket through a real `cumulo up` (fake driver): the API relays to
the agent, which shares the VM's serial port among every viewer. The browser's side of it:
tests/e2e; a real guest's getty: tests/e2e/test_console_qemu.py."""

from __future__ import annotations

import contextlib
import json
import tomllib

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import Cloud


def _admin(cloud: Cloud) -> str:
    token: str = tomllib.loads((cloud.state_dir / "client.toml").read_text())["token"]
    return token


_SOCKETS = contextlib.ExitStack()  # closed at the end of the test


def _open(cloud: Cloud, ref: str, token: str | None, header: bool = False) -> ClientConnection:
    url = f"ws://127.0.0.1:{cloud.port}/v1/instances/{ref}/serial"
    headers = {"Authorization": f"Bearer {token}"} if header else None
    ws = _SOCKETS.enter_context(connect(url, additional_headers=headers, open_timeout=10))
    if token is not None and not header:
        ws.send(json.dumps({"token": token}))
    return ws


def _read_until(ws: ClientConnection, text: bytes) -> bytes:
    seen = b""
    while text not in seen:
        msg = ws.recv(timeout=10)
        assert isinstance(msg, bytes), f"expected bytes, got {msg!r} after {seen!r}"
        seen += msg
    return seen


def _refused(ws: ClientConnection) -> tuple[dict[str, str], int | None]:
    msg = json.loads(ws.recv(timeout=10))
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    return msg, ws.close_code


def test_serial_console_through_the_api(fake_cloud: Cloud) -> None:
    with _SOCKETS:
        _check(fake_cloud)


def _check(cloud: Cloud) -> None:
    cloud.cli("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano", "--wait")
    admin = _admin(cloud)

    a = _open(cloud, "web-1", admin)
    assert json.loads(a.recv(timeout=10)) == {"type": "ready"}
    assert b"fake# " in _read_until(a, b"fake# ")
    b = _open(cloud, "web-1", admin, header=True)  # a script may use the header instead
    assert json.loads(b.recv(timeout=10)) == {"type": "ready"}
    a.send(b"echo typed-in-a\r")
    assert b"typed-in-a\r\n" in _read_until(b, b"typed-in-a\r\nfake# ")  # both see it
    _read_until(a, b"typed-in-a\r\nfake# ")

    # Another project's token sees nothing of it, a bad token nothing at all.
    cloud.cli("project", "create", "other")
    other = cloud.json("project", "token", "other")["token"]
    msg, code = _refused(_open(cloud, "web-1", other))
    assert msg["type"] == "error" and msg["code"] == "unknown_instance" and code == 4404
    msg, code = _refused(_open(cloud, "web-1", "cmo_not-a-token"))
    assert msg["code"] == "unauthorized" and code == 4401
    for first in ("not json", b"\xff\xfe", '{"token": 42}'):
        ws = _open(cloud, "web-1", None)
        ws.send(first)
        msg, code = _refused(ws)
        assert msg["code"] == "invalid_input" and code == 4400, first

    # The instance stopping ends every viewer's stream, and says so.
    b.close()
    cloud.cli("instance", "stop", "web-1", "--wait")
    closed = None
    while closed is None:
        frame = a.recv(timeout=10)
        if isinstance(frame, str):
            closed = json.loads(frame)
    assert closed["type"] == "closed"
    msg, code = _refused(_open(cloud, "web-1", admin))
    assert msg["code"] == "serial_unavailable" and "not running" in msg["detail"]
    assert code == 4409
