"""Request dependencies: the services bundle and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request

from cumulo.api.batches import CreateBatcher
from cumulo.api.threads import service
from cumulo.services.auth import TokenCache, authenticate
from cumulo.services.context import Principal, Services


async def services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hop per request just to read app.state.
    return _services(request)


async def create_batcher(request: Request) -> CreateBatcher:
    batcher: CreateBatcher = request.app.state.create_batcher
    return batcher


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return await principal_of(request.app, authorization)


async def principal_of(app: FastAPI, authorization: str | None) -> Principal:
    """Who `authorization` (an Authorization header's value) is: for routes that are not
    plain requests too (the serial console's WebSocket)."""
    cache: TokenCache = app.state.token_cache
    who = cache.get(authorization)
    if who is None:
        svc: Services = app.state.services
        who = await service(svc, _authenticate, svc, authorization)
        cache.put(authorization or "", who)
    return who


def _authenticate(svc: Services, authorization: str | None) -> Principal:
    with svc.db.session() as s:
        return authenticate(s, authorization)


Svc = Annotated[Services, Depends(services)]
Who = Annotated[Principal, Depends(principal)]
Creates = Annotated[CreateBatcher, Depends(create_batcher)]
