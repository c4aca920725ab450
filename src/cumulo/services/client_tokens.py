"""EC2's ClientToken: the same token again gets the first answer (the ids it created), the
same token with other parameters is refused. Kept per project and action."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from cumulo.db.tables import ClientTokenRow
from cumulo.domain.errors import Conflict, InvalidInput
from cumulo.services.context import Principal, Services

MAX_TOKEN = 64


def _project_id(who: Principal) -> str:
    assert who.project_id is not None, "client tokens are for a project's own keys"
    return who.project_id


def claim(svc: Services, who: Principal, action: str, token: str, digest: str
          ) -> list[str] | None:
    """None: the token is new and now ours (call `fulfil` or `release`). Else the ids the
    first request with it created."""
    if not 0 < len(token) <= MAX_TOKEN or not token.isascii() or not token.isprintable():
        raise InvalidInput(f"a client token is 1 to {MAX_TOKEN} printable ASCII characters",
                           code="invalid_client_token")
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
