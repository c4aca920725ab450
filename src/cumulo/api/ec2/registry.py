"""The actions the facade answers, registered by the module of their resource family."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cumulo.api.ec2.params import Params
from cumulo.services.context import Principal, Services

Body = dict[str, Any]


@dataclass(frozen=True)
class Call:
    """One EC2 request, authenticated: the caller acts in its access key's project."""

    svc: Services
    who: Principal
    project: str
    region: str
    params: Params
    action: str
    request_id: str

    @property
    def owner_id(self) -> str:
        """EC2's account id: the project's name (there is no other account)."""
        return self.project


def new_request_id() -> str:
    return str(uuid.uuid4())


SyncHandler = Callable[[Call], Body]
AsyncHandler = Callable[[Call], Awaitable[Body]]


@dataclass(frozen=True)
class Action:
    handler: SyncHandler | AsyncHandler
    is_async: bool


ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[SyncHandler], SyncHandler]:
    """Register a handler that runs as a short service call (see api.threads.service)."""
    def register(fn: SyncHandler) -> SyncHandler:
        ACTIONS[name] = Action(fn, is_async=False)
        return fn
    return register


def async_action(name: str) -> Callable[[AsyncHandler], AsyncHandler]:
    """Register a handler that awaits something besides the database (a host agent)."""
    def register(fn: AsyncHandler) -> AsyncHandler:
        ACTIONS[name] = Action(fn, is_async=True)
        return fn
    return register
