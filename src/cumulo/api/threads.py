"""Where the API's blocking work runs.

The busiest calls (creating and changing instances, the agent protocol) go through `service`:
- on SQLite they run right on the event loop. The database is a library in this process, so a
  call is CPU work that holds the GIL. Handing it to a worker thread only adds GIL hand-offs
  between that thread and the event loop: measured, an authenticated request that lists an
  empty project costs 2.9 ms of CPU through a worker thread and 1.5 ms inline (see
  docs/benchmarks.md). The price: a call is not preempted, so these calls must stay short
  (bounded by one request's or one host's size). Nothing else in this process holds SQLite's
  write lock for long, so waiting for it (engine.py's writer queue) is short as well.
- on PostgreSQL they run in a worker thread: a statement waits for a server, and the event
  loop serves other requests meanwhile.
Other sync endpoints (listings of any length, rare calls) run in anyio's worker threads, as
FastAPI does. Their number is cut from anyio's default of 40 to WORKER_THREADS: the work holds
the GIL most of the time, so more threads do not add throughput, they add contention:
measured with the control-plane benchmark, 40 threads cost about 1.5 ms of CPU per request
more than a handful.

Long jobs (an image import converts or downloads for minutes) must not take those few
threads from everyone else: they run in a pool of their own, LONG_JOB_THREADS at a time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from anyio import to_thread
from fastapi import FastAPI

from cumulo.services.context import Services

WORKER_THREADS = 4
LONG_JOB_THREADS = 4

T = TypeVar("T")

_long_jobs = ThreadPoolExecutor(max_workers=LONG_JOB_THREADS, thread_name_prefix="cumulo-job")


async def service(svc: Services, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, a short service call: inline on SQLite, in a worker thread
    otherwise."""
    if svc.db.in_process:
        return fn(*args, **kwargs)
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def long_job(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the long-job pool (it keeps running if the client goes away)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_long_jobs, functools.partial(fn, *args))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # The default limiter belongs to the running event loop: set it from inside that loop.
    to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
    yield
