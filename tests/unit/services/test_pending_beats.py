"""Heartbeats written together by the API's flusher (services.pending_beats): a beat is
never lost, a host marked down by another process comes back at the flush, and a host's
first beat in a process is still written at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cumulo.db.tables import EventRow, HostRow
from cumulo.services import agents, hosts
from cumulo.services.context import Principal, Role, Services
from tests.conftest import AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


def _host(svc: Services) -> tuple[str, datetime, str]:
    with svc.db.session() as s:
        row = s.execute(select(HostRow.id, HostRow.last_seen, HostRow.state)
                        .where(HostRow.name == AGENT_HOST)).one()
        return row[0], row[1].replace(tzinfo=UTC), row[2]


def _age_all(svc: Services, host_id: str, state: str = "up") -> None:
    """As if its last beat was written long ago (by this process: remembered as written)."""
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.id == host_id)
                  .values(last_seen=LONG_AGO, state=state))
    svc.notifier.heartbeats[host_id] = time.monotonic() - 3600


def test_a_known_hosts_beat_waits_for_the_flush_then_is_written(svc: Services) -> None:
    agents.assignments(svc, AGENT, AGENT_HOST)  # its first beat here: written at once
    host_id, first, _ = _host(svc)
    assert first > LONG_AGO + timedelta(minutes=59)
    svc.notifier.pending_beats.start()
    _age_all(svc, host_id)
    agents.assignments(svc, AGENT, AGENT_HOST)
    assert _host(svc)[1] == LONG_AGO  # noted, not written
    agents.assignments(svc, AGENT, AGENT_HOST)  # within HEARTBEAT_WRITE_EVERY: not noted again
    taken = svc.notifier.pending_beats.take()
    assert taken == [host_id]
    hosts.write_heartbeats(svc, taken)
    _, seen, state = _host(svc)
    assert (state, seen > datetime.now(UTC) - timedelta(seconds=5)) == ("up", True)
    assert svc.notifier.pending_beats.take(stop=True) == []
    _age_all(svc, host_id)
    agents.assignments(svc, AGENT, AGENT_HOST)  # no flusher any more: written at once
    assert _host(svc)[1] > datetime.now(UTC) - timedelta(seconds=5)


def test_a_host_marked_down_by_another_process_comes_back_at_the_flush(svc: Services) -> None:
    agents.assignments(svc, AGENT, AGENT_HOST)
    host_id, _, _ = _host(svc)
    svc.notifier.pending_beats.start()
    _age_all(svc, host_id, state="down")  # this process still remembers it up
    agents.assignments(svc, AGENT, AGENT_HOST)
    assert _host(svc)[2] == "down"
    hosts.write_heartbeats(svc, svc.notifier.pending_beats.take(stop=True))
    assert _host(svc)[2] == "up"
    with svc.db.session() as s:
        said = s.scalars(select(EventRow.kind).where(EventRow.resource_id == host_id)).all()
    assert "up" in said


def test_a_host_marked_down_here_is_written_up_at_once(svc: Services) -> None:
    agents.assignments(svc, AGENT, AGENT_HOST)
    host_id, _, _ = _host(svc)
    svc.notifier.pending_beats.start()
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.id == host_id).values(last_seen=LONG_AGO))
    assert AGENT_HOST in hosts.sweep_down(svc)  # forgets it as written
    agents.assignments(svc, AGENT, AGENT_HOST)
    assert _host(svc)[2] == "up"
    assert svc.notifier.pending_beats.take(stop=True) == []


def test_beats_that_could_not_be_written_are_written_at_once_next_time(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    agents.assignments(svc, AGENT, AGENT_HOST)
    host_id, _, _ = _host(svc)

    def away() -> Iterator[Session]:
        raise OperationalError("UPDATE hosts", {}, Exception("the database is away"))

    monkeypatch.setattr(svc.db, "session", away)
    with pytest.raises(OperationalError):
        hosts.write_heartbeats(svc, [host_id])
    assert host_id not in svc.notifier.heartbeats  # its next beat is written, not noted
