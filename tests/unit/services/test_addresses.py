"""Private addresses: every NIC gets a MAC no other NIC holds."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from cumulo.domain.netaddr import random_mac
from cumulo.services import agents, instances, networks
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)


def _mac_of(svc: Services, name: str) -> str:
    (a,) = [a for a in agents.assignments(svc, AGENT, AGENT_HOST).instances if a.hostname == name]
    return a.nics[0].mac


def test_random_macs_are_locally_administered_unicast_with_40_random_bits() -> None:
    macs = {random_mac() for _ in range(2000)}
    assert len(macs) == 2000
    assert all(re.fullmatch(r"52(:[0-9a-f]{2}){5}", m) for m in macs)


def test_a_drawn_mac_that_a_nic_holds_is_drawn_again(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    instances.create(svc, ADMIN, None, instances.CreateInstance(name="a", image="tiny",
                                                                type="t1.nano"))
    taken = _mac_of(svc, "a")
    draws: Iterator[str] = iter([taken, taken, "52:00:00:00:00:01"])
    monkeypatch.setattr(networks, "_mac", lambda: next(draws))
    instances.create(svc, ADMIN, None, instances.CreateInstance(name="b", image="tiny",
                                                                type="t1.nano"))
    assert _mac_of(svc, "b") == "52:00:00:00:00:01"
