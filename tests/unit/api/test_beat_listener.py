"""Hosts' beats over UDP (api/beat_listener.py, agent/beat_sender.py): a signed, newer beat
of a host this process wrote up is noted for the heartbeat flusher and keeps it up; forged,
replayed, malformed and unknown ones change nothing. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from cumulo import beats
from cumulo.agent import beat_sender
from cumulo.agent.api_client import ApiClient
from cumulo.api import beat_listener
from cumulo.db.tables import HostRow
from cumulo.services import agents, hosts
from cumulo.services.auth import issue_token
from cumulo.services.context import Principal, Role, Services
from tests.conftest import AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


def _agent_token(svc: Services) -> str:
    with svc.db.session() as s:
        return issue_token(s, Role.AGENT, host_name=AGENT_HOST)


def _last_seen(svc: Services) -> datetime:
    with svc.db.session() as s:
        seen = s.execute(select(HostRow.last_seen).where(HostRow.name == AGENT_HOST)).scalar_one()
    return seen.replace(tzinfo=UTC)


def _age(svc: Services) -> None:
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == AGENT_HOST).values(last_seen=LONG_AGO))


def test_a_signed_newer_beat_of_a_host_written_up_here_is_noted(svc: Services) -> None:
    key = beats.key_of(_agent_token(svc))
    listener = beat_listener.BeatListener(svc)
    seq = time.time_ns()
    assert not listener.hear(beats.encode(AGENT_HOST, seq, key))  # not written up here yet
    agents.assignments(svc, AGENT, AGENT_HOST)  # its first long-poll: written at once
    svc.notifier.pending_beats.start()
    _age(svc)
    host_id = hosts.beat_keys(svc, AGENT_HOST)
    assert host_id is not None

    assert listener.hear(beats.encode(AGENT_HOST, seq + 1, key))
    assert svc.notifier.pending_beats.take() == [host_id[0]]
    assert not listener.hear(beats.encode(AGENT_HOST, seq + 1, key))  # played again
    assert not listener.hear(beats.encode(AGENT_HOST, seq, key))  # older
    assert not listener.hear(beats.encode(AGENT_HOST, seq + 2, beats.key_of("cmo_forged")))
    assert not listener.hear(beats.encode("host-unknown", seq + 3, key))
    assert not listener.hear(b"cumulo-beat/1 " + b"x" * 300)
    assert svc.notifier.pending_beats.take() == []
    assert _last_seen(svc) == LONG_AGO  # none of those wrote anything


def test_beats_sent_by_an_agent_keep_its_host_up_through_a_real_socket(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    token = _agent_token(svc)
    found = hosts.beat_keys(svc, AGENT_HOST)
    assert found is not None
    agents.assignments(svc, AGENT, AGENT_HOST)  # written up by this process
    svc.notifier.pending_beats.start()
    _age(svc)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a free port number
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(beat_sender, "BEAT_EVERY_S", 0.05)

    async def beat_until_noted() -> list[str]:
        client = ApiClient(f"http://127.0.0.1:{port}", token)
        stop = asyncio.Event()
        task = asyncio.create_task(beat_sender.send_beats(client, AGENT_HOST, stop))
        deadline = time.monotonic() + 10
        while not (taken := svc.notifier.pending_beats.take()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await client.close()
        return taken

    with beat_listener.listening(svc, "127.0.0.1", port) as listener:
        assert listener is not None
        taken = asyncio.run(beat_until_noted())
    assert taken == [found[0]]
    hosts.write_heartbeats(svc, taken)  # what the API's flusher does with them
    assert _last_seen(svc) > datetime.now(UTC) - timedelta(seconds=10)


def test_an_api_reached_in_process_or_by_unix_socket_gets_no_beats() -> None:
    assert ApiClient("http://127.0.0.1:8000", "t").beat_address() == ("127.0.0.1", 8000)
    assert ApiClient("https://api.example", "t").beat_address() == ("api.example", 443)
    assert ApiClient("unix:/run/cumulo.sock", "t").beat_address() is None
    in_process = httpx.MockTransport(lambda _r: httpx.Response(204))
    assert ApiClient("http://api", "t", transport=in_process).beat_address() is None


def test_an_address_in_use_leaves_hosts_alive_by_their_polls(svc: Services) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with beat_listener.listening(svc, "127.0.0.1", taken.getsockname()[1]) as listener:
            assert listener is None
