"""The API application in this process, reached by an agent's real ApiClient through an
httpx transport that can misbehave as a network or a proxy would: corrupt a response, or cut
it short. Nothing is mocked on either side: the faults are in the bytes between them."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable

import httpx

from cumulo.agent.api_client import ApiClient
from cumulo.api.app import create_app
from cumulo.services.auth import issue_token
from cumulo.services.context import Role, Services


class _Cut(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by the test")


class FaultyNet(httpx.AsyncBaseTransport):
    def __init__(self, svc: Services) -> None:
        self.inner = httpx.ASGITransport(app=create_app(svc))
        self.requests: list[httpx.Request] = []
        self.served: collections.Counter[str] = collections.Counter()  # body bytes per path
        self.corrupt: collections.Counter[str] = collections.Counter()  # path end -> times
        self.cut: dict[str, int] = {}  # path end -> the next response stops after N bytes
        self.before: Callable[[httpx.Request], None] | None = None

    def _fault(self, faults: dict[str, int] | collections.Counter[str], path: str) -> str:
        return next((k for k, v in faults.items() if path.endswith(k) and v), "")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.before is not None:
            self.before(request)
        resp = await self.inner.handle_async_request(request)
        body = await resp.aread()
        path = request.url.path
        if key := self._fault(self.corrupt, path):
            self.corrupt[key] -= 1
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + \
                body[len(body) // 2 + 1:]
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() != "content-length"]
        if key := self._fault(self.cut, path):
            n = self.cut.pop(key)
            self.served[path] += n
            return httpx.Response(resp.status_code, headers=headers, stream=_Cut(body[:n]))
        self.served[path] += len(body)
        return httpx.Response(resp.status_code, headers=headers, content=body)

    def gets(self, path_end: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET" and r.url.path.endswith(path_end)]


def agent_client(svc: Services, net: FaultyNet, host: str) -> ApiClient:
    with svc.db.session() as s:
        token = issue_token(s, Role.AGENT, host_name=host)
    return ApiClient("http://api", token, transport=net)
