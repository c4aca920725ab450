"""`image create-from-instance` as the API serves it (REST and EC2's CreateImage): record the
job for the instance's host agent, then wait for its outcome on the event loop. Not in a
long-job thread: the upload that ends the job is checked and recorded in that pool, and
requests waiting there could starve their own uploads."""

from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool

from cumulo.services import image_exports
from cumulo.services.context import Principal, Services
from cumulo.services.views import ImageView


async def create_from_instance(svc: Services, who: Principal, project: str | None, name: str,
                               instance: str) -> ImageView:
    export_id = await run_in_threadpool(image_exports.request, svc, who, project, name,
                                        instance)
    started = time.monotonic()
    while True:
        view = await run_in_threadpool(image_exports.outcome, svc, export_id,
                                       time.monotonic() - started)
        if view is not None:
            return view
        await asyncio.sleep(image_exports.POLL_S)
