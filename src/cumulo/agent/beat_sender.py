"""The agent's heartbeats over UDP (cumulo.beats): one datagram every BEAT_EVERY_S to the API
process it talks to, for as long as the agent runs. Nothing answers them: the long-poll
answers remain heartbeats too, so an agent whose datagrams are lost (a firewall, an API
reached through a proxy) stays up as long as its polls are answered in time."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from cumulo import beats
from cumulo.agent.api_client import ApiClient

log = structlog.get_logger()

# Four chances within hosts.HOST_DOWN_AFTER (12 s): a datagram or two lost change nothing.
BEAT_EVERY_S = 3.0


async def send_beats(client: ApiClient, name: str, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    transport: asyncio.DatagramTransport | None = None
    target: tuple[str, int] | None = None
    failed = ""
    try:
        while not stop.is_set():
            address = client.beat_address()
            if address != target and transport is not None:
                transport.close()
                transport = None
            if address is not None and transport is None:
                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        asyncio.DatagramProtocol, remote_addr=address)
                    target, failed = address, ""
                except OSError as e:  # not resolved, no route: tried again at the next beat
                    if str(e) != failed:
                        log.warning("beats_not_sent", api=f"{address[0]}:{address[1]}",
                                    error=str(e))
                    failed = str(e)
            if transport is not None:
                transport.sendto(beats.encode(name, time.time_ns(), client.beat_key))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BEAT_EVERY_S)
    finally:
        if transport is not None:
            transport.close()
