"""Join tokens: how a new hypervisor host joins the cloud.

An admin creates one (`cumulo host join-token create`), optionally bound to a zone, valid for
a while and for one registration. The new host's agent trades it (`join`) for a host token of
its own, which it keeps in its state dir and uses from then on, like the agents `cumulo up`
starts. A used, expired, forged or wrong-zone join token is refused and changes nothing.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, JoinTokenRow, TokenRow
from cumulo.domain.errors import Conflict, InvalidInput, NotFound, Unauthorized
from cumulo.domain.ids import new_id
from cumulo.domain.validation import dns_label
from cumulo.services.auth import issue_token, require_admin, token_digest
from cumulo.services.context import Principal, Role, Services
from cumulo.services.hosts import HOST_DOWN_AFTER

DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=30)
_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """'90s', '30m', '2h', '7d' -> a duration (`create` bounds it)."""
    m = _DURATION.match(text)
    if m is None:
        raise InvalidInput(f"invalid duration {text!r}: a number and a unit s, m, h or d "
                           "(e.g. 30m, 2h)", code="invalid_duration")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


@dataclass(frozen=True)
class JoinToken:
    token: str  # shown once
    id: str
    zone: str | None
    expires_at: datetime


def create(svc: Services, who: Principal, zone: str | None, ttl: timedelta) -> JoinToken:
    require_admin(who)
    if zone is not None and zone not in svc.settings.zone_names():
        raise NotFound(f"unknown zone {zone!r} (see `cumulo zone list`)", code="unknown_zone")
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise InvalidInput(f"a join token lives 1 s to {MAX_TTL.days} days",
                           code="invalid_duration")
    token = "cmj_" + secrets.token_urlsafe(32)
    row = JoinTokenRow(id=new_id("jt"), sha256=token_digest(token), zone=zone,
                       expires_at=datetime.now(UTC) + ttl)
    with svc.db.session() as s:
        s.add(row)
    return JoinToken(token=token, id=row.id, zone=zone, expires_at=row.expires_at)


def join(svc: Services, token: str, host_name: str, zone: str) -> str:
    """Trade a join token for the host token of `host_name` in `zone`; returns the latter.

    A host whose name is registered and up is refused (a join token is no way to take over a
    running host's identity); one that is down may join again under its name (its disk lost
    its token): it gets a new host token and the old ones stop working."""
    dns_label(host_name, "host name")
    if zone not in svc.settings.zone_names():
        raise NotFound(f"unknown zone {zone!r}", code="unknown_zone")
    now = datetime.now(UTC)
    with svc.db.session() as s:
        row = s.scalar(select(JoinTokenRow).where(JoinTokenRow.sha256 == token_digest(token)))
        _check(row, zone, now)
        assert row is not None
        host = s.scalar(select(HostRow).where(HostRow.name == host_name))
        if host is not None and host.state == "up" and host.last_seen > now - HOST_DOWN_AFTER:
            raise Conflict(f"host {host_name!r} is registered and up; pick another name",
                           code="host_name_taken")
        # Claimed by one statement: of two agents racing with one token, one wins.
        claimed = s.execute(update(JoinTokenRow)
                            .where(JoinTokenRow.id == row.id, JoinTokenRow.used_at.is_(None))
                            .values(used_at=now, used_by=host_name))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise Unauthorized("this join token was already used", code="join_token_used")
        _revoke_host_tokens(s, host_name)
        return issue_token(s, Role.AGENT, host_name=host_name,
                           description=f"joined with {row.id}")


def _check(row: JoinTokenRow | None, zone: str, now: datetime) -> None:
    if row is None:
        raise Unauthorized("unknown join token", code="invalid_join_token")
    if row.used_at is not None:
        raise Unauthorized(f"this join token was already used (by host {row.used_by})",
                           code="join_token_used")
    if row.expires_at <= now:
        raise Unauthorized("this join token has expired", code="join_token_expired")
    if row.zone is not None and row.zone != zone:
        raise Unauthorized(f"this join token is for zone {row.zone}, not {zone}",
                           code="join_token_zone")


def _revoke_host_tokens(s: Session, host_name: str) -> None:
    s.execute(delete(TokenRow).where(TokenRow.role == Role.AGENT.value,
                                     TokenRow.host_name == host_name))
