"""A path parameter is one segment: what a client encoded cannot reach another route.

The server routes on the decoded path, so `/v1/instances/..%2Fconsole` arrives as
`/v1/instances/../console` and would match `/v1/instances/{ref}/console` with ref `..`; and
`%2E%2E` is `..`, which a proxy on the way may resolve. A segment that is `.` or `..` or holds
a `/` once decoded names nothing (no name or id holds one), so the request is refused before
routing: 400 invalid_name, nothing looked up.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from cumulo.api.errors import problem


def climbing_segment(raw_path: bytes) -> str | None:
    """The first segment of `raw_path` (as sent: percent-encoded) that is not one name once
    decoded, or None."""
    for raw in raw_path.split(b"?", 1)[0].split(b"/"):
        decoded = unquote_to_bytes(raw)
        if decoded in (b".", b"..") or b"/" in decoded:
            return decoded.decode("utf-8", "replace")
    return None


class OneSegmentPerName:
    """ASGI middleware refusing a request whose path holds a climbing segment."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            bad = climbing_segment(raw)
            if bad is not None:
                response = problem(400, "invalid_name", f"invalid name {bad!r} in the path: a "
                                   "name is one path segment, not '.', '..' or one with a '/'")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
