"""Serving the API with uvicorn, for `cumulo up` and the control-plane benchmark.

uvicorn's graceful shutdown waits for every request in progress, and a host's long-poll may
wait 25 s for a change: `cumulo up` took 24 s to stop, and `cumulo down` kills it after 20 s,
before its lifespan had stopped the agent. So shutting down starts by closing the notifier:
every long-poll is answered at once, and a host that polls again meanwhile is answered at once
too, until its connection closes.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from cumulo.api import beat_listener, heap
from cumulo.services.notifier import Notifier


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.close()
        await super().shutdown(sockets)


def serve(app: FastAPI, notifier: Notifier, port: int, *, access_log: bool = True,
          host: str = "127.0.0.1") -> None:
    """Serve `app` on `host`:`port` until SIGINT or SIGTERM, and hear the hosts' beats at
    the same address and port number over UDP (api/beat_listener.py)."""
    heap.settle()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            access_log=access_log)
    with beat_listener.listening(app.state.services, host, port):
        Server(config, notifier).run()
