"""The API's worker threads: a few (GIL contention), and long jobs in a pool of their own."""

from __future__ import annotations

import threading

from anyio import to_thread
from fastapi.testclient import TestClient

from cumulo.api import threads
from cumulo.api.app import create_app
from cumulo.services.context import Services


def test_the_api_runs_its_sync_work_in_a_few_worker_threads(svc: Services) -> None:
    with TestClient(create_app(svc)) as client:
        assert client.portal is not None
        tokens = client.portal.call(lambda: to_thread.current_default_thread_limiter()
                                    .total_tokens)
    assert tokens == threads.WORKER_THREADS


def test_a_long_job_runs_outside_the_worker_threads(svc: Services) -> None:
    async def where() -> str:
        return await threads.long_job(lambda: threading.current_thread().name)

    with TestClient(create_app(svc)) as client:
        assert client.portal is not None
        assert client.portal.call(where).startswith("cumulo-job")
