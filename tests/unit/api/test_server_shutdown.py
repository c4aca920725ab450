"""Stopping the API answers the hosts' long-polls at once instead of waiting them out
(uvicorn's graceful shutdown waits for every request in progress)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import uvicorn

from cumulo.api.app import create_app
from cumulo.api.server import Server
from cumulo.services.auth import issue_token
from cumulo.services.context import Role, Services
from cumulo.services.notifier import Notifier
from tests.conftest import AGENT_HOST, free_port


async def test_a_closed_notifier_answers_its_waiters_and_waits_no_more() -> None:
    n = Notifier()
    since = n.version("h")
    waiting = asyncio.create_task(n.wait("h", since, 30))
    await asyncio.sleep(0.05)
    n.close()
    assert await asyncio.wait_for(waiting, 5) == since
    assert await asyncio.wait_for(n.wait("h", since, 30), 5) == since


def test_stopping_the_api_answers_a_waiting_long_poll(svc: Services) -> None:
    with svc.db.session() as s:
        token = issue_token(s, Role.AGENT, host_name=AGENT_HOST)
    port = free_port()
    server = Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port,
                                   log_level="warning"), svc.notifier)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{port}/v1/agent/hosts/{AGENT_HOST}/assignments"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60) as client:
        for _ in range(100):  # until it listens
            try:
                version = client.get(url, headers=headers).json()["version"]
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        answer: list[httpx.Response] = []
        poll = threading.Thread(target=lambda: answer.append(client.get(
            url, headers=headers, params={"since": version, "wait": 25})))
        poll.start()
        threading.Event().wait(0.5)  # the long-poll waits
        assert not answer
        server.should_exit = True  # what SIGTERM does
        poll.join(10)
        serving.join(10)
    assert answer and answer[0].status_code == 200  # answered, not cut off
    assert not serving.is_alive()  # stopped well before the long-poll's 25 s
