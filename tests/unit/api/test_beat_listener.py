"""Hosts' beats over UDP (api/beat_listener.py, agent/beat_sender.py): a signed, newer beat
of a host whose long-poll this process answered keeps it up; forged, replayed, stale,
malformed and unknown ones change nothing. Real sockets on loopback, the API's own flusher."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from cumulo import beats
from cumulo.agent import beat_sender
from cumulo.agent.api_client import ApiClient
from cumulo.api import beat_listener
from cumulo.db.tables import HostRow
from cumulo.services.auth import issue_token
from cumulo.services.context import Role, Services
from tests.conftest import AGENT_HOST

POLL = f"/v1/agent/hosts/{AGENT_HOST}/assignments"
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


def _agent_token(svc: Services) -> str:
    with svc.db.session() as s:
        return issue_token(s, Role.AGENT, host_name=AGENT_HOST)


def _poll(api: TestClient, token: str) -> None:
    r = api.post(POLL, json={}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def _last_seen(svc: Services) -> datetime:
    with svc.db.session() as s:
        seen = s.execute(select(HostRow.last_seen).where(HostRow.name == AGENT_HOST)).scalar_one()
    return seen.replace(tzinfo=UTC)


def _age(svc: Services) -> None:
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == AGENT_HOST).values(last_seen=LONG_AGO))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_only_a_signed_newer_beat_of_a_host_polling_here_counts(
        api: TestClient, svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    token = _agent_token(svc)
    key = beats.key_of(token)
    listener = beat_listener.BeatListener(svc)
    seq = time.time_ns()
    assert not listener.hear(beats.encode(AGENT_HOST, seq, key))  # no poll answered here yet
    _poll(api, token)
    assert listener.hear(beats.encode(AGENT_HOST, seq + 1, key))
    assert not listener.hear(beats.encode(AGENT_HOST, seq + 1, key))  # played again
    assert not listener.hear(beats.encode(AGENT_HOST, seq, key))  # older
    assert not listener.hear(beats.encode(AGENT_HOST, seq + 2, beats.key_of("cmo_forged")))
    assert not listener.hear(beats.encode("host-unknown", seq + 3, key))
    assert not listener.hear(b"cumulo-beat/1 " + b"x" * 300)
    assert listener.hear(beats.encode(AGENT_HOST, seq + 4, key))
    monkeypatch.setattr(beat_listener, "KEY_FRESH_S", 0.0)  # its polls stopped long ago
    assert not listener.hear(beats.encode(AGENT_HOST, seq + 5, key))


def test_an_agents_beats_alone_keep_its_host_seen_and_forged_ones_do_not(
        api: TestClient, svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    token = _agent_token(svc)
    port = _free_port()
    monkeypatch.setattr(beat_sender, "BEAT_EVERY_S", 0.05)

    async def beat_until_seen() -> bool:
        client = ApiClient(f"http://127.0.0.1:{port}", token)
        stop = asyncio.Event()
        task = asyncio.create_task(beat_sender.send_beats(client, AGENT_HOST, stop))
        deadline = time.monotonic() + 10
        while (stale := _last_seen(svc) == LONG_AGO) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await client.close()
        return not stale

    with beat_listener.listening(svc, "127.0.0.1", port) as listener:
        assert listener is not None
        _poll(api, token)  # answered here: its beats can be checked
        _age(svc)
        # Forged beats for ~3 flushes of the API's heartbeat flusher: nothing is written.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
            for _ in range(30):
                forger.sendto(beats.encode(AGENT_HOST, time.time_ns(), beats.key_of("cmo_x")),
                              ("127.0.0.1", port))
                time.sleep(0.1)
        assert _last_seen(svc) == LONG_AGO
        # The agent's own: its host is seen again, with no request of its own.
        assert asyncio.run(beat_until_seen())
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
