"""Request dependencies: the services bundle and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from cumulo.services.auth import authenticate
from cumulo.services.context import Principal, Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    svc = services(request)
    with svc.db.session() as s:
        return authenticate(s, authorization)


Svc = Annotated[Services, Depends(services)]
Who = Annotated[Principal, Depends(principal)]
