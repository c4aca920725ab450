"""The API application: native REST under /v1 (OpenAPI at /openapi.json)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import structlog
from fastapi import Depends, FastAPI

from cumulo import __version__, web
from cumulo.api import errors, metrics, openapi, threads
from cumulo.api.batches import CreateBatcher
from cumulo.api.ec2.endpoint import Ec2Mount
from cumulo.api.inputs import refuse_unstorable
from cumulo.api.routers import (
    access_keys,
    agent_images,
    agents,
    baremetal,
    baremetal_deploy,
    catalogue,
    dedicated_hosts,
    edge,
    events,
    hosts,
    images,
    instances,
    join,
    migrations,
    networking,
    placement_groups,
    projects,
    serial,
    usage,
    volumes,
)
from cumulo.api.segments import OneSegmentPerName
from cumulo.services import (
    baremetal_conductor,
    baremetal_power_sync,
    migration_deadlines,
    pending_beats,
    terminated,
)
from cumulo.services import hosts as host_service
from cumulo.services.auth import TokenCache
from cumulo.services.context import Services

log = structlog.get_logger("cumulo.api")

# How often silent hosts (host_service.sweep_down), overdue migrations
# (migration_deadlines.sweep) and deleted instances past their retention (terminated.purge)
# are looked for.
SWEEP_EVERY_S = 5.0
CONDUCT_EVERY_S = 2.0  # how often the bare-metal conductor looks for nodes with work


async def _sweep(svc: Services) -> None:
    """Mark down the hosts whose agent went silent, fail the migrations past their time
    limit and forget deleted instances past their retention, for as long as the API runs."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            for name in await threads.service(svc, host_service.sweep_down, svc):
                log.warning("host_down", host=name)
            for mid in await threads.service(svc, migration_deadlines.sweep, svc):
                log.warning("migration_overdue", migration=mid)
            await threads.service(svc, terminated.purge, svc)
        except Exception as e:  # the database is away: try again at the next sweep
            log.warning("host_sweep_failed", error=str(e))


async def _flush_heartbeats(svc: Services) -> None:
    """Write the agents' noted heartbeats together (services.pending_beats), for as long as
    the API runs; what is noted when it stops is written then."""
    beats = svc.notifier.pending_beats
    beats.start()
    try:
        while True:
            await asyncio.sleep(pending_beats.FLUSH_EVERY_S)
            if ids := beats.take():
                try:
                    await threads.service(svc, host_service.write_heartbeats, svc, ids)
                except Exception as e:  # the database is away: they are written at once later
                    log.warning("heartbeats_not_written", hosts=len(ids), error=str(e))
    finally:
        if ids := beats.take(stop=True):
            with contextlib.suppress(Exception):
                host_service.write_heartbeats(svc, ids)


async def conduct(svc: Services) -> None:
    """The bare-metal conductor's passes (services.baremetal_conductor), in the long-job
    threads (a pass waits on BMCs for seconds). Every API process runs it, `cumulo up`'s too;
    every few passes it reads the power of the deployed servers too."""
    passes = 0
    while True:
        await asyncio.sleep(CONDUCT_EVERY_S)
        passes += 1
        sync = passes % baremetal_power_sync.SYNC_EVERY_PASSES == 0
        try:
            await threads.long_job(functools.partial(baremetal_conductor.run_pass, svc,
                                                     sync_power=sync))
        except Exception as e:  # the database is away: try again at the next pass
            log.warning("baremetal_pass_failed", error=str(e))


@contextlib.asynccontextmanager
async def running(*loops: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """`loops` run as tasks for as long as the context lasts."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def background(svc: Services) -> contextlib.AbstractAsyncContextManager[None]:
    """What every API process runs beside its requests: the sweeps, the heartbeat flusher
    and the bare-metal conductor (a lifespan of its own, as `cumulo up`'s, includes it)."""
    return running(_sweep(svc), _flush_heartbeats(svc), conduct(svc))


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with threads.lifespan(app), background(app.state.services):
        yield


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(
        title="cumulo",
        version=__version__,
        description="Compute instances on real QEMU virtual machines.",
        lifespan=_lifespan,
        # `/v1/instances/` (an empty name) is no route: not a redirect to the collection's,
        # where a DELETE or POST would mean something else.
        redirect_slashes=False,
    )
    app.state.services = svc
    app.state.token_cache = TokenCache()
    app.state.create_batcher = CreateBatcher(svc)
    errors.install(app)
    app.add_middleware(OneSegmentPerName)
    # Routes are matched in order, one by one: the busiest first (agents long-poll and
    # report at every change; instances are what users create).
    # What users type is checked for text no field may hold (see cumulo.api.inputs). The
    # agents' protocol checks its own fields (services.agents, services.hosts.register): a
    # report is applied but what it cannot use, rather than refused whole.
    user_facing = [Depends(refuse_unstorable)]
    for module in (agents, instances, catalogue, images, projects, networking, volumes, join,
                   hosts, placement_groups, dedicated_hosts, access_keys, events, usage,
                   agent_images, baremetal, baremetal_deploy, migrations, edge):
        machines = module in (agents, agent_images, baremetal_deploy, edge)
        app.include_router(module.router, dependencies=[] if machines else user_facing)
    app.include_router(projects.whoami_router, dependencies=user_facing)
    app.include_router(migrations.host_router, dependencies=user_facing)
    app.include_router(serial.router)  # a WebSocket: checks its own parameters
    web.install(app)

    # EC2's Query API at the API's own URL (POST /), in front of the routes.
    app.add_middleware(Ec2Mount, svc=svc)
    openapi.install(app)

    metrics.install(app, svc)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
