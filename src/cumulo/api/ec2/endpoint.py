"""The EC2 endpoint: `POST /` (and `GET /?Action=...`, the presigned form) of the API's own
URL, so that `aws --endpoint-url http://127.0.0.1:8750 ec2 ...` needs nothing else.

Mounted in front of the REST app as plain ASGI (`Ec2Mount`): only requests to `/` that are
EC2's reach it, so a page served at `GET /` stays possible.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cumulo.api.ec2 import sigv4, sts, xml
from cumulo.api.ec2.errors import Ec2Error, from_cumulo
from cumulo.api.ec2.params import Params
from cumulo.api.ec2.registry import ACTIONS, Call, new_request_id
from cumulo.api.threads import service
from cumulo.domain.errors import CumuloError
from cumulo.services import access_keys
from cumulo.services.context import Services

# Importing the families registers their actions.
from cumulo.api.ec2 import (  # noqa: F401  isort: skip
    addresses, catalogue, hosts, instances, keypairs, run, security_groups, snapshots, tags,
    volumes, vpcs,
)

log = structlog.get_logger("cumulo.ec2")
MAX_BODY = 512 * 1024  # 64 KiB of user-data is 88 KiB in base64; nothing else is close
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_XML = "text/xml;charset=UTF-8"


def _xml(status: int, text: str) -> Response:
    return Response(text, status_code=status, media_type=_XML)


def _decode(raw: bytes, where: str) -> list[tuple[str, str]]:
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Ec2Error("InvalidParameterValue", f"the {where} is not form-encoded UTF-8") \
            from None
    for key, value in pairs:
        if _UNSTORABLE.search(key) or _UNSTORABLE.search(value):
            raise Ec2Error("InvalidParameterValue", f"{key}: NUL characters are refused")
    return pairs


def _owner(svc: Services, key_id: str) -> access_keys.KeyOwner:
    found = access_keys.owner(svc, key_id)
    if found is None:
        raise Ec2Error("AuthFailure", "AWS was not able to validate the provided access "
                       "credentials (unknown or deleted access key)", 401)
    return found


async def _answer(svc: Services, request: Request, request_id: str) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Ec2Error("InvalidParameterValue", f"the request is larger than {MAX_BODY} bytes")
    query = _decode(request.url.query.encode(), "query string")
    form = _decode(body, "body") if request.method == "POST" else []
    signed_req = sigv4.Request(method=request.method, path=request.url.path, query=query,
                               headers={k.lower(): v for k, v in request.headers.items()},
                               body=body)
    regions = {r.name for r in svc.settings.regions}
    signed = sigv4.parse(signed_req, datetime.now(UTC), regions)
    owner = await service(svc, _owner, svc, signed.access_key_id)
    sigv4.verify(signed_req, signed, owner.secret)
    flat = dict(query) | dict(form)
    name = flat.get("Action")
    if signed.service == sts.SERVICE:
        return _xml(200, sts.get_caller_identity(name, owner.project, signed.access_key_id,
                                                 request_id))
    if not name:
        raise Ec2Error("MissingAction", "the request has no Action parameter")
    found = ACTIONS.get(name)
    if found is None:
        raise Ec2Error("UnsupportedOperation", f"cumulo does not support the action {name!r}")
    call = Call(svc=svc, who=owner.principal, project=owner.project, region=signed.region,
                params=Params(flat), action=name, request_id=request_id)
    if found.is_async:
        result = await found.handler(call)  # type: ignore[misc]
    else:
        result = await service(svc, found.handler, call)
    assert isinstance(result, dict)
    return _xml(200, xml.response(name, request_id, result))


async def handle(svc: Services, request: Request) -> Response:
    request_id = new_request_id()
    try:
        return await _answer(svc, request, request_id)
    except Exception as exc:
        if isinstance(exc, Ec2Error):
            e = exc
        elif isinstance(exc, CumuloError):
            e = from_cumulo(exc)
        else:
            log.exception("ec2 request failed", request_id=request_id)
            e = Ec2Error("InternalError", "an internal error occurred", 500)
        render = sts.error if _is_sts(request) else xml.error
        return _xml(e.status, render(e.code, e.message, request_id))


def _is_sts(request: Request) -> bool:
    """Whether the request was signed for STS (its errors then take STS's shape)."""
    signature = request.headers.get("authorization", "") or request.query_params.get(
        "X-Amz-Credential", "")
    return "/sts/aws4_request" in signature


def is_ec2(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["path"] != "/":
        return False
    if scope["method"] == "POST":
        return True
    return scope["method"] == "GET" and b"Action=" in scope.get("query_string", b"")


class Ec2Mount:
    """ASGI: EC2's requests to `svc`'s facade, everything else to `app`."""

    def __init__(self, app: ASGIApp, svc: Services) -> None:
        self.app = app
        self.svc = svc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_ec2(scope):
            response = await handle(self.svc, Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
