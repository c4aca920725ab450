"""Addresses: every NIC gets a MAC no other NIC holds; private and public addresses are
picked from where the last one was handed out."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from cumulo.db.tables import InstanceRow
from cumulo.domain.errors import Conflict
from cumulo.domain.instance import Action
from cumulo.domain.netaddr import address_int, candidate_windows, random_mac
from cumulo.protocol import Observation
from cumulo.services import address_picker, agents, instances, networks
from cumulo.services.context import Principal, Role, Services
from cumulo.services.views import InstanceView
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


def _delete(svc: Services, name: str) -> None:
    row = instances.act(svc, ADMIN, None, name, Action.DELETE)
    with svc.db.session() as s:
        generation = s.get_one(InstanceRow, row.id).generation
    agents.report(svc, AGENT, AGENT_HOST,
                  [Observation(id=row.id, state="deleted", generation=generation)])


def _create(svc: Services, name: str) -> InstanceView:
    return instances.create(svc, ADMIN, None, instances.CreateInstance(name=name, image="tiny",
                                                                       type="t1.nano"))


def test_addresses_go_on_from_the_last_one_handed_out_not_back_to_a_freed_one(
        svc: Services) -> None:
    a, b = _create(svc, "a"), _create(svc, "b")
    assert a.private_ip is not None and b.private_ip is not None
    assert address_int(b.private_ip) == address_int(a.private_ip) + 1
    assert address_int(b.public_ip or "") == address_int(a.public_ip or "") + 1
    _delete(svc, "a")
    c = _create(svc, "c")
    assert c.private_ip is not None and c.public_ip is not None
    assert address_int(c.private_ip) == address_int(b.private_ip) + 1
    assert address_int(c.public_ip) == address_int(b.public_ip or "") + 1


def test_a_requested_address_is_checked_against_the_taken_ones(svc: Services) -> None:
    a = _create(svc, "a")
    with pytest.raises(Conflict) as e:
        instances.create(svc, ADMIN, None, instances.CreateInstance(
            name="b", image="tiny", type="t1.nano", private_ip=a.private_ip))
    assert e.value.code == "ip_in_use"


def _picker(svc: Services, taken: set[str], first: str, last: str,
            skip: tuple[int, ...] = ()) -> str | None:
    def taken_among(candidates: list[str]) -> list[str]:
        calls.append(len(candidates))
        return [c for c in candidates if c in taken]

    calls: list[int] = []
    with svc.db.session() as s:
        ip = address_picker.pick(s, "test-range", address_int(first), address_int(last),
                                 taken_among, skip)
    assert all(n <= address_picker.WINDOW for n in calls)
    if ip is not None:
        taken.add(ip)
    return ip


def test_the_picker_wraps_around_to_freed_addresses_and_says_when_all_are_taken(
        svc: Services) -> None:
    taken: set[str] = set()
    got = [_picker(svc, taken, "10.0.0.2", "10.0.3.254") for _ in range(1021)]
    assert got[0] == "10.0.0.2" and got[-1] == "10.0.3.254" and len(set(got)) == 1021
    taken -= {"10.0.1.7", "10.0.0.9"}  # freed
    assert _picker(svc, taken, "10.0.0.2", "10.0.3.254") == "10.0.0.9"
    assert _picker(svc, taken, "10.0.0.2", "10.0.3.254") == "10.0.1.7"
    assert _picker(svc, taken, "10.0.0.2", "10.0.3.254") is None


def test_the_picker_leaves_out_the_skipped_last_bytes(svc: Services) -> None:
    taken = {"127.100.0.254"}
    assert _picker(svc, taken, "127.100.0.250", "127.100.1.3", (0, 255)) == "127.100.0.250"
    got = [_picker(svc, taken, "127.100.0.250", "127.100.1.3", (0, 255)) for _ in range(7)]
    assert got == ["127.100.0.251", "127.100.0.252", "127.100.0.253", "127.100.1.1",
                   "127.100.1.2", "127.100.1.3", None]


def test_candidate_windows_cover_every_address_once_from_the_start_around() -> None:
    first, last = address_int("10.0.0.2"), address_int("10.0.2.10")
    windows = list(candidate_windows(first, last, address_int("10.0.1.0"), 100))
    flat = [address_int(ip) for w in windows for ip in w]
    assert flat == list(range(address_int("10.0.1.0"), last + 1)) + list(
        range(first, address_int("10.0.1.0")))
    assert [len(w) for w in windows[:4]] == [8, 32, 100, 100]  # small first: usually free
    assert all(len(w) <= 100 for w in windows)
    # a start outside the range is brought into it
    assert next(candidate_windows(first, last, 0, 3)) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
