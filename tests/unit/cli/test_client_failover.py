"""The CLI's client over several API URLs: a connection refused moves on to the next API for
any request; a connection broken after the request was sent (it may have been done) moves on
only for a request that is safe to send twice: a GET, or one carrying a client token."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from cumulo.cli.client import Client, ClientConfig, CliError


class _Apis:
    """Two API processes: `a` fails as told (before or after reading the request), `b`
    answers. Both record what reached them."""

    def __init__(self, a_fails: type[httpx.TransportError]) -> None:
        self.a_fails = a_fails
        self.seen: list[tuple[str, str, Any]] = []

    def handler(self, name: str) -> Any:
        def handle(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content) if request.content else None
            self.seen.append((name, request.method, body))
            if name == "a":
                raise self.a_fails("the API process died", request=request)
            return httpx.Response(202, json={"id": "i-0123456789abcdef0"})
        return handle


def _client(apis: _Apis) -> Client:
    client = Client(ClientConfig(url="http://a:1,http://b:2", token="t"), project=None)
    client._apis = [httpx.Client(base_url=f"http://{n}", transport=httpx.MockTransport(
        apis.handler(n))) for n in ("a", "b")]
    return client


def test_a_refused_connection_moves_any_request_on() -> None:
    apis = _Apis(httpx.ConnectError)
    assert _client(apis).post("/v1/volumes", json={"name": "v"})["id"]
    assert [(n, m) for n, m, _ in apis.seen] == [("a", "POST"), ("b", "POST")]


def test_a_request_that_may_have_arrived_is_sent_again_only_with_a_token() -> None:
    apis = _Apis(httpx.ReadError)
    body = {"name": "web", "client_token": "0f" * 16}
    assert _client(apis).post("/v1/instances", json=body, idempotent=True)["id"]
    assert apis.seen == [("a", "POST", body), ("b", "POST", body)]  # the same token both times

    apis = _Apis(httpx.ReadError)
    with pytest.raises(CliError) as e:
        _client(apis).post("/v1/volumes", json={"name": "v"})
    assert e.value.code == "unreachable"
    assert [n for n, *_ in apis.seen] == ["a"]  # not made twice

    apis = _Apis(httpx.ReadError)
    assert _client(apis).get("/v1/instances")["id"]
    assert [n for n, *_ in apis.seen] == ["a", "b"]
