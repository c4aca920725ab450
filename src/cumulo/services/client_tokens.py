"""Client tokens (EC2's ClientToken, the REST API's `client_token`): the same token again gets
the first answer (the ids it created), the same token with other parameters is refused. Kept
per project and action.

Two ways to use them: `claim`/`fulfil`/`release` around work done in transactions of its own
(EC2's actions), or `earlier` then `record` inside the transaction that creates (the REST
create: the token is then written if and only if what it made was, so a client that lost the
answer, an API process killed mid-request, can send the request again, to any API process).
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cumulo.db.tables import ClientTokenRow
from cumulo.domain.errors import Conflict, InvalidInput
from cumulo.services.context import Principal, Services

MAX_TOKEN = 64


def _project_id(who: Principal) -> str:
    assert who.project_id is not None, "client tokens are for a project's own keys"
    return who.project_id


def check(token: str) -> str:
    if not 0 < len(token) <= MAX_TOKEN or not token.isascii() or not token.isprintable():
        raise InvalidInput(f"a client token is 1 to {MAX_TOKEN} printable ASCII characters",
                           code="invalid_client_token")
    return token


def digest_of(params: object) -> str:
    """A request's parameters (JSON-able), as compared between two uses of one token."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def earlier(s: Session, project_id: str, action: str, token: str, digest: str
            ) -> list[str] | None:
    """The ids a committed request with this token made, or None when it is new."""
    row = s.get(ClientTokenRow, (project_id, check(token), action))
    if row is None:
        return None
    if row.digest != digest:
        raise Conflict(f"client token {token!r} was used with other parameters",
                       code="idempotent_parameter_mismatch")
    return list(row.result)


def record(s: Session, project_id: str, action: str, token: str, digest: str,
           ids: list[str]) -> None:
    """In the transaction that made `ids`: the token's answer, committed with them."""
    s.add(ClientTokenRow(project_id=project_id, token=check(token), action=action,
                         digest=digest, result=ids))
    s.flush()  # a second use of the token in the same transaction sees it


def claim(svc: Services, who: Principal, action: str, token: str, digest: str
          ) -> list[str] | None:
    """None: the token is new and now ours (call `fulfil` or `release`). Else the ids the
    first request with it created."""
    check(token)
    key = (_project_id(who), token, action)
    try:
        with svc.db.session() as s:
            s.add(ClientTokenRow(project_id=key[0], token=token, action=action, digest=digest,
                                 result=[]))
        return None
    except IntegrityError:
        pass
    with svc.db.session() as s:
        row = s.get(ClientTokenRow, key)
        if row is None:  # released meanwhile: the first request failed
            return claim(svc, who, action, token, digest)
        if row.digest != digest:
            raise Conflict(f"client token {token!r} was used with other parameters",
                           code="idempotent_parameter_mismatch")
        if not row.result:
            raise Conflict(f"the request with client token {token!r} is still in progress",
                           code="invalid_state")
        return list(row.result)


def fulfil(svc: Services, who: Principal, action: str, token: str, ids: list[str]) -> None:
    with svc.db.session() as s:
        row = s.get(ClientTokenRow, (_project_id(who), token, action))
        if row is not None:
            row.result = ids


def release(svc: Services, who: Principal, action: str, token: str) -> None:
    with svc.db.session() as s:
        row = s.get(ClientTokenRow, (_project_id(who), token, action))
        if row is not None:
            s.delete(row)
