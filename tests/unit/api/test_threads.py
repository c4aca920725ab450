"""The API's worker threads: a few (GIL contention), short service calls inline on SQLite,
and long jobs in a pool of their own."""

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


def test_a_service_call_runs_inline_on_sqlite_and_in_a_worker_thread_on_postgresql(
    svc: Services,
) -> None:
    def call(first: str, *, second: str) -> tuple[int, str]:
        return threading.get_ident(), first + second

    async def where() -> tuple[int, tuple[int, str]]:
        loop_thread = threading.get_ident()
        return loop_thread, await threads.service(svc, call, "a", second="b")

    with TestClient(create_app(svc)) as client:
        assert client.portal is not None
        loop_thread, (call_thread, args) = client.portal.call(where)
    inline = svc.db.url.startswith("sqlite")
    assert svc.db.in_process is inline
    assert (call_thread == loop_thread) is inline
    assert args == "ab"  # positional and keyword arguments reach the call
