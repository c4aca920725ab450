"""Host capacities as placement reads them: totals, what instances hold, and liveness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from cumulo.db.tables import HostRow
from cumulo.services import hosts
from cumulo.services.context import Principal, Role, Services


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
