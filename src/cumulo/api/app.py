"""The API application: native REST under /v1 (OpenAPI at /openapi.json)."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from cumulo import __version__, web
from cumulo.api import errors, openapi, threads
from cumulo.api.batches import CreateBatcher
from cumulo.api.ec2.endpoint import Ec2Mount
from cumulo.api.inputs import refuse_unstorable
from cumulo.api.routers import (
    access_keys,
    agents,
    catalogue,
    hosts,
    images,
    instances,
    join,
    networking,
    placement_groups,
    projects,
    serial,
    volumes,
)
from cumulo.api.segments import OneSegmentPerName
from cumulo.services.auth import TokenCache
from cumulo.services.context import Services


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(
        title="cumulo",
        version=__version__,
        description="Compute instances on real QEMU virtual machines.",
        lifespan=threads.lifespan,
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
                   hosts, placement_groups, access_keys):
        app.include_router(module.router,
                           dependencies=[] if module is agents else user_facing)
    app.include_router(projects.whoami_router, dependencies=user_facing)
    app.include_router(serial.router)  # a WebSocket: checks its own parameters
    web.install(app)

    # EC2's Query API at the API's own URL (POST /), in front of the routes.
    app.add_middleware(Ec2Mount, svc=svc)
    openapi.install(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
