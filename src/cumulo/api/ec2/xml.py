"""EC2's XML: `<ActionResponse xmlns=...><requestId/>...`, lists as `<fooSet><item/>`.

Bodies are plain data: a dict is an element per key (in order; None is left out), a list an
`<item>` per member, a bool `true`/`false`, a datetime ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{value.microsecond // 1000:03d}Z"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return timestamp(value)
    return escape(str(value))


def _render(name: str, value: Any, out: list[str]) -> None:
    if value is None:
        return
    out.append(f"<{name}>")
    if isinstance(value, dict):
        for key, item in value.items():
            _render(key, item, out)
    elif isinstance(value, list):
        for item in value:
            _render("item", item, out)
    else:
        out.append(_scalar(value))
    out.append(f"</{name}>")


def response(action: str, request_id: str, body: dict[str, Any]) -> str:
    out = [_HEAD, f'<{action}Response xmlns="{NAMESPACE}">', f"<requestId>{request_id}</requestId>"]
    for key, value in body.items():
        _render(key, value, out)
    out.append(f"</{action}Response>")
    return "".join(out)


def error(code: str, message: str, request_id: str) -> str:
    return (f"{_HEAD}<Response><Errors><Error><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>")
