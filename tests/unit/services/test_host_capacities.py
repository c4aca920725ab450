"""Host capacities as placement reads them: totals, what instances hold, and liveness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from cumulo.config import Settings
from cumulo.db.tables import HostRow
from cumulo.scheduler.placement import HostCapacity
from cumulo.services import catalogue, hosts
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN


def _register(svc: Services, name: str, archs: list[str]) -> str:
    return hosts.register(svc, Principal(role=Role.AGENT, host_name=name), name=name,
                          zone="local-1a", architectures=archs, vcpus=8,
                          ram_mib=4096, driver="fake", accel="fake", agent_url="")


def test_capacities_tell_live_hosts_from_silent_and_down_ones(svc: Services) -> None:
    live = _register(svc, "cap-live", ["x86_64", "arm64"])
    silent = _register(svc, "cap-silent", ["x86_64"])
    down = _register(svc, "cap-down", ["arm64"])
    long_ago = datetime.now(UTC) - hosts.HOST_DOWN_AFTER - timedelta(seconds=1)
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.id == silent).values(last_seen=long_ago))
        s.execute(update(HostRow).where(HostRow.id == down).values(state="down"))
    with svc.db.session() as s:
        caps = {c.host_id: c for c in hosts.capacities(s, svc.settings, "local-1a")}
    assert {h: caps[h].up for h in (live, silent, down)} == {
        live: True, silent: False, down: False}
    assert caps[live].architectures == frozenset({"x86_64", "arm64"})
    assert caps[silent].architectures == frozenset({"x86_64"})
    assert (caps[live].vcpus_total, caps[live].ram_mib_total) == (8, 4096)
    assert (caps[live].vcpus_used, caps[live].ram_mib_used) == (0, 0)
    with svc.db.session() as s:
        assert hosts.capacities(s, svc.settings, "no-such-zone") == []


def test_zones_list_a_host_that_joins_between_their_reads(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL each statement reads its own snapshot: a host that joined after the
    host rows were read but before the capacities were must not make `zones` fail (it did,
    with a 500, while an agent joined)."""
    _register(svc, "cap-first", ["x86_64"])
    real = hosts.capacities

    def joined_meanwhile(s: Session, settings: Settings,
                         zone: str | None = None) -> list[HostCapacity]:
        s.add(HostRow(id="h-late", name="cap-late", zone="local-1a", architectures=["x86_64"],
                      vcpus=4, ram_mib=2048, driver="fake", accel="fake", agent_url="",
                      state="up", last_seen=datetime.now(UTC)))
        s.flush()
        return real(s, settings, zone)

    monkeypatch.setattr(hosts, "capacities", joined_meanwhile)
    zone = next(z for z in catalogue.list_zones(svc, ADMIN) if z.name == "local-1a")
    assert {"cap-first", "cap-late"} <= {h.name for h in zone.hosts}
