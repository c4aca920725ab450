"""The agent API: registration, long-poll for assignments, reports. Agent tokens only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response

from cumulo import beats
from cumulo.api.deps import Svc, Who
from cumulo.api.openapi import raises
from cumulo.api.threads import service
from cumulo.domain.errors import Conflict, Forbidden
from cumulo.protocol import Assignments, HostRegistration, Poll, Registered, Report
from cumulo.services import agents, hosts
from cumulo.services.context import Principal, Services

# Every call is for one host, whose agent alone may make it (auth.require_agent).
router = APIRouter(prefix="/v1/agent/hosts", tags=["agent"], responses=raises(Forbidden))

# Each answer is a heartbeat: an agent that asks to wait longer is answered sooner, so that a
# silent host is one whose agent stopped (see hosts.HOST_DOWN_AFTER).
MAX_WAIT_S = hosts.LONG_POLL_MAX.total_seconds()

T = TypeVar("T")


@router.post("/register", responses=raises(Conflict))  # underlay_ip_taken
async def register(svc: Svc, who: Who, body: HostRegistration) -> Registered:
    host_id = await service(
        svc,
        hosts.register,
        svc,
        who,
        name=body.name,
        zone=body.zone,
        architectures=body.architectures,
        vcpus=body.vcpus,
        ram_mib=body.ram_mib,
        driver=body.driver,
        accel=body.accel,
        agent_url=body.agent_url,
        agent_version=body.agent_version,
        underlay_ip=body.underlay_ip,
        storage=body.storage,
        disk=body.disk,
        cpus=body.cpus,
    )
    return Registered(host_id=host_id)


@router.get("/{name}/assignments", response_model=Assignments)
async def assignments(
    request: Request, svc: Svc, who: Who, name: str, since: int = -1, wait: float = 0.0,
    dns: Annotated[list[str] | None, Query()] = None,
    have: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The long-poll without a report (see `Poll` for the parameters); `dns` is repeated."""
    return await _answer(request, svc, who, name, since, wait, dns, have)


@router.post("/{name}/assignments", response_model=Assignments)
async def poll(request: Request, svc: Svc, who: Who, name: str, body: Poll) -> Response:
    """The long-poll as agents send it, with the report of their last pass (applied first:
    a report that changes what the host must decide on wakes this very poll)."""
    r = body.report
    if r is not None and (r.observations or r.volumes or r.snapshots or r.disk
                          or r.migrations):
        await service(svc, agents.report, svc, who, name, r.observations, r.volumes,
                      r.snapshots, r.disk, r.migrations)
    return await _answer(request, svc, who, name, body.since, body.wait, body.dns, body.have)


async def _answer(request: Request, svc: Services, who: Principal, name: str, since: int,
                  wait: float, dns: list[str] | None, have: str | None) -> Response:
    """At once when anything changed since `since`, else after up to `wait` s."""
    host_id = agents.known_host_id(svc, who, name)
    if host_id is None:
        host_id = await service(svc, agents.host_id, svc, who, name)
    version = svc.notifier.version(host_id)
    if since == version and wait > 0:
        woken = await unless_gone(request, svc.notifier.wait(host_id, since,
                                                             min(wait, MAX_WAIT_S)))
        if woken is None:
            return Response(status_code=204)  # nobody is left to read it
        version = woken
    desired = await service(svc, agents.assignments, svc, who, name, dns, have)
    desired.version = version
    _keep_beat_key(svc, request, name, host_id)
    # Serialized here: FastAPI would validate the model it was just built from once more
    # (the busiest call of the API: every agent, at every change).
    return Response(desired.model_dump_json(), media_type="application/json")


def _keep_beat_key(svc: Services, request: Request, name: str, host_id: str) -> None:
    """The key of the host's UDP beats: the token this answered poll carried, which the
    agent signs its beats with (cumulo.beats); kept fresh by every answer."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    svc.notifier.beat_keys[name] = (host_id, beats.key_of(token), time.monotonic())


async def unless_gone(request: Request, waiting: Coroutine[Any, Any, T]) -> T | None:
    """`waiting`'s result, or None as soon as the client disconnects: a long-poll whose agent
    went away does not wait out its time. (Stopping the API answers the others: api/server.)"""
    wait = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({wait, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wait, gone):
            task.cancel()
        await asyncio.wait({wait, gone})  # until cancelled: the notifier forgets the waiter
    return wait.result() if wait.done() and not wait.cancelled() else None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass  # what is left of the request's body (a POST's was read already)


@router.post("/{name}/report", status_code=204)
async def report(svc: Svc, who: Who, name: str, body: Report) -> Response:
    await service(svc, agents.report, svc, who, name, body.observations, body.volumes,
                  body.snapshots, body.disk, body.migrations)
    return Response(status_code=204)
