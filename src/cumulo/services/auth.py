"""Bearer tokens. Only a SHA-256 of each token is stored; the token itself is shown once."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import ProjectRow, TokenRow
from cumulo.domain.errors import Forbidden, NotFound, Unauthorized
from cumulo.domain.ids import new_id
from cumulo.services.context import Principal, Role

DEFAULT_PROJECT = "default"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    s: Session,
    role: Role,
    *,
    project_id: str | None = None,
    host_name: str | None = None,
    description: str = "",
) -> str:
    token = "cmo_" + secrets.token_urlsafe(32)
    s.add(
        TokenRow(
            id=new_id("tok"),
            sha256=token_digest(token),
            role=role.value,
            project_id=project_id,
            host_name=host_name,
            description=description,
        )
    )
    return token


def authenticate(s: Session, authorization: str | None) -> Principal:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    row = s.connection().execute(
        _TOKEN, {"digest": token_digest(authorization[7:].strip())}).first()
    if row is None:
        raise Unauthorized("invalid token")
    role, project_id, host_name = row
    return Principal(role=Role(role), project_id=project_id, host_name=host_name)


# Built once, columns on the session's connection: with 1,000 idle hosts, each agent's token
# is checked again at every other long-poll (TokenCache's ttl), 125 times a second; through
# the ORM that was 15 % of the idle API's CPU.
_TOKEN = select(TokenRow.role, TokenRow.project_id, TokenRow.host_name).where(
    TokenRow.sha256 == bindparam("digest"))


class TokenCache:
    """Recently verified tokens, so a busy API does not hit the database on every request.

    Only successes are cached, for a few seconds: a token removed with its project stops
    working at most `ttl_s` later.
    """

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        with self._lock:
            hit = self._entries.get(authorization)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, authorization: str, who: Principal) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[authorization] = (who, time.monotonic() + self.ttl_s)


def ensure_default_project(s: Session) -> ProjectRow:
    row = s.scalar(select(ProjectRow).where(ProjectRow.name == DEFAULT_PROJECT))
    if row is None:
        row = ProjectRow(id=new_id("prj"), name=DEFAULT_PROJECT)
        s.add(row)
        s.flush()
    return row


# Built once: every call of the user API by an admin runs it.
_PROJECT_NAMED = select(ProjectRow).where(ProjectRow.name == bindparam("name"))


def scope_project(s: Session, who: Principal, requested: str | None) -> ProjectRow:
    """The project a call acts in: members get their own; admins any (default: 'default')."""
    if who.role in (Role.AGENT, Role.EDGE):
        raise Forbidden(f"{who.role.value} tokens cannot use the user API")
    if who.is_admin:
        name = requested or DEFAULT_PROJECT
        row = s.scalar(_PROJECT_NAMED, {"name": name})
        if row is None:
            raise NotFound(f"project {name!r} does not exist", code="unknown_project")
        return row
    row = s.get(ProjectRow, who.project_id)
    if row is None:
        raise Unauthorized("the token's project no longer exists")
    if requested is not None and requested != row.name:
        raise Forbidden(f"this token may only act in project {row.name!r}")
    return row


def require_admin(who: Principal) -> None:
    if not who.is_admin:
        raise Forbidden("this needs an admin token")


def require_edge(who: Principal) -> None:
    if who.role is not Role.EDGE and not who.is_admin:
        raise Forbidden("this needs the edge's token")


def require_agent(who: Principal, host_name: str) -> None:
    if who.is_admin:
        return
    if who.role is not Role.AGENT or who.host_name != host_name:
        raise Forbidden(f"this token may not act for host {host_name!r}")
