"""Join tokens (admin) and the join of a new host's agent (authenticated by the join token
itself: the agent has no token of its own yet)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.api.threads import service
from cumulo.domain.errors import Conflict, Forbidden, NotFound, Unauthorized
from cumulo.services import join_tokens

router = APIRouter(tags=["hosts"])


class JoinTokenCreate(Input):
    zone: str | None = Field(default=None, description="the zone the host must join (any)")
    ttl: str = Field(default="1h", description="how long it may be used: 90s, 30m, 2h, 7d")


class CreatedJoinToken(BaseModel):
    token: str = Field(description="shown once")
    id: str
    zone: str | None
    expires_at: datetime


@router.post("/v1/hosts/join-tokens", status_code=201, responses=raises(Forbidden, NotFound))
async def create_join_token(svc: Svc, who: Who, body: JoinTokenCreate) -> CreatedJoinToken:
    ttl = join_tokens.parse_ttl(body.ttl)
    made = await service(svc, join_tokens.create, svc, who, body.zone, ttl)
    return CreatedJoinToken(token=made.token, id=made.id, zone=made.zone,
                            expires_at=made.expires_at)


class Join(Input):
    join_token: str = Field(max_length=200)
    name: str
    zone: str


class Joined(BaseModel):
    host_token: str = Field(description="the host's own token, for every later request")


@router.post("/v1/agent/join", status_code=201,
             responses=raises(Unauthorized, NotFound, Conflict))
async def join(svc: Svc, body: Join) -> Joined:
    token = await service(svc, join_tokens.join, svc, body.join_token, body.name, body.zone)
    return Joined(host_token=token)
