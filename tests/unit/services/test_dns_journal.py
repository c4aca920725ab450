"""The DNS-delta protocol: the journal of record changes per network, and the assignments that
send a host only what changed since the version it claims to hold."""

from __future__ import annotations

import time

import pytest

from cumulo.agent.dns_book import DnsBook
from cumulo.domain.instance import Action
from cumulo.protocol import Assignments, DnsRecord, NetworkRef, Observation
from cumulo.services import agent_networks, agents, instances, networks, notifier
from cumulo.services.context import Principal, Role, Services
from cumulo.services.dns_journal import Delta, DnsJournal
from cumulo.services.notifier import Notifier
from cumulo.services.views import InstanceView
from tests.conftest import ADMIN, AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
NET = "net-0000000000000000a"
OTHER_NET = "net-0000000000000000b"


def rec(mac: str, ip: str, name: str = "vm") -> DnsRecord:
    return DnsRecord(hostname=name, fqdn=f"{name}.default.local-1a.cloud.test", ip=ip, mac=mac)


A = rec("52:54:00:00:00:0a", "10.0.0.2", "a")
B = rec("52:54:00:00:00:0b", "10.0.0.3", "b")
C = rec("52:54:00:00:00:0c", "10.0.0.4", "c")


def _apply(held: dict[str, DnsRecord], d: Delta) -> dict[str, DnsRecord]:
    """What a host holding `held` has after applying `d` (as the agent's DnsBook does)."""
    out = {m: r for m, r in held.items() if m not in d.removed}
    out.update({r.mac: r for r in d.added})
    return out


# --- the journal alone ---------------------------------------------------------------------


def test_an_untouched_network_is_at_version_zero_with_nothing_to_send() -> None:
    j = DnsJournal()
    assert j.version(NET) == 0
    assert j.since(NET, j.epoch, 0) == Delta(0, [], [])


def test_since_gives_the_changes_after_a_version_only() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    v1 = j.version(NET)
    assert v1 == 1
    j.changed(NET, added=[B, C])
    assert j.version(NET) == 3
    assert j.since(NET, j.epoch, v1) == Delta(3, [B, C], [])
    assert j.since(NET, j.epoch, 2) == Delta(3, [C], [])
    assert j.since(NET, j.epoch, 0) == Delta(3, [A, B, C], [])
    j.changed(NET, removed=[A.mac])
    assert j.since(NET, j.epoch, 3) == Delta(4, [], [A.mac])
    assert j.since(NET, j.epoch, v1) == Delta(4, [B, C], [A.mac])


def test_one_call_with_removals_and_additions_counts_one_version_per_change() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    j.changed(NET, added=[B], removed=[A.mac])
    assert j.version(NET) == 3
    assert j.since(NET, j.epoch, 1) == Delta(3, [B], [A.mac])


def test_the_same_version_gives_an_empty_delta() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A, B])
    assert j.since(NET, j.epoch, 2) == Delta(2, [], [])


def test_versions_are_per_network() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    j.changed(OTHER_NET, added=[B, C])
    assert (j.version(NET), j.version(OTHER_NET)) == (1, 2)
    assert j.since(NET, j.epoch, 0) == Delta(1, [A], [])
    assert j.since(OTHER_NET, j.epoch, 1) == Delta(2, [C], [])


def test_another_epoch_or_a_future_version_gets_no_delta() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    other = DnsJournal()  # another API process (or this one restarted)
    assert other.epoch != j.epoch
    assert j.since(NET, other.epoch, 1) is None
    assert j.since(NET, other.epoch, 0) is None
    assert j.since(NET, "", 1) is None
    assert j.since(NET, j.epoch, 2) is None  # from a version this process never reached
    assert j.since(OTHER_NET, j.epoch, 1) is None


def test_a_version_trimmed_away_gets_no_delta() -> None:
    j = DnsJournal(keep=2)
    recs = [rec(f"52:54:00:00:01:{i:02x}", f"10.0.1.{i}") for i in range(1, 6)]
    for r in recs:
        j.changed(NET, added=[r])  # the 5th change is more than 2 * keep: only 2 are kept
    assert j.version(NET) == 5
    assert j.since(NET, j.epoch, 3) == Delta(5, recs[3:], [])  # changes 4 and 5 are kept
    assert j.since(NET, j.epoch, 4) == Delta(5, recs[4:], [])
    assert j.since(NET, j.epoch, 2) is None  # change 3 is gone
    assert j.since(NET, j.epoch, 0) is None
    assert j.since(NET, j.epoch, 5) == Delta(5, [], [])


def test_the_journal_stays_bounded_and_recent_versions_still_get_deltas() -> None:
    keep = 10
    j = DnsJournal(keep=keep)
    recs = [rec(f"52:54:00:00:02:{i % 256:02x}", f"10.0.2.{i % 250 + 1}") for i in range(200)]
    for r in recs:
        j.changed(NET, added=[r])
    assert j.version(NET) == 200
    assert j.since(NET, j.epoch, 200 - keep) == Delta(200, recs[-keep:], [])
    assert j.since(NET, j.epoch, 200 - 2 * keep - 1) is None
    assert j.since(NET, j.epoch, 0) is None


def test_add_then_remove_within_the_window_gives_only_the_removal() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    j.changed(NET, added=[B])
    j.changed(NET, removed=[B.mac])
    assert j.since(NET, j.epoch, 1) == Delta(3, [], [B.mac])
    # A host that never saw B is told to drop a MAC it does not hold: harmless.
    assert _apply({A.mac: A}, j.since(NET, j.epoch, 1) or Delta(0, [], [])) == {A.mac: A}


def test_remove_then_add_again_gives_the_record_and_no_removal() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    j.changed(NET, removed=[A.mac])
    moved = rec(A.mac, "10.0.0.9", "a")  # same MAC, another address
    j.changed(NET, added=[moved])
    assert j.since(NET, j.epoch, 1) == Delta(3, [moved], [])
    assert j.since(NET, j.epoch, 2) == Delta(3, [moved], [])
    assert j.since(NET, j.epoch, 0) == Delta(3, [moved], [])


def test_a_changed_record_is_sent_once_in_its_latest_form() -> None:
    j = DnsJournal()
    j.changed(NET, added=[A])
    renamed = rec(A.mac, A.ip, "renamed")
    j.changed(NET, added=[renamed])
    assert j.since(NET, j.epoch, 0) == Delta(2, [renamed], [])


@pytest.mark.parametrize("remove_first", [True, False])
def test_two_macs_on_one_address_commute(remove_first: bool) -> None:
    """One instance frees 10.0.0.2 and another takes it: whatever order the two threads
    journal in after their commits, the host ends up with the new instance only."""
    j = DnsJournal()
    j.changed(NET, added=[A])
    base = j.version(NET)
    taker = rec("52:54:00:00:00:ff", A.ip, "taker")
    if remove_first:
        j.changed(NET, removed=[A.mac])
        j.changed(NET, added=[taker])
    else:
        j.changed(NET, added=[taker])
        j.changed(NET, removed=[A.mac])
    d = j.since(NET, j.epoch, base)
    assert d == Delta(base + 2, [taker], [A.mac])
    assert _apply({A.mac: A}, d) == {taker.mac: taker}


def test_subscribers_are_the_hosts_last_sent_each_network() -> None:
    j = DnsJournal()
    assert j.subscribers([NET]) == set()
    j.subscribe("host-1", [NET, OTHER_NET])
    j.subscribe("host-2", {OTHER_NET})
    assert j.subscribers([NET]) == {"host-1"}
    assert j.subscribers([OTHER_NET]) == {"host-1", "host-2"}
    assert j.subscribers([NET, OTHER_NET]) == {"host-1", "host-2"}
    assert j.subscribers([]) == set()
    assert j.subscribers(["net-unknown"]) == set()
    # host-1's instances left NET and joined a third network: it no longer hears about NET.
    j.subscribe("host-1", ["net-third"])
    assert j.subscribers([NET]) == set()
    assert j.subscribers([OTHER_NET]) == {"host-2"}
    assert j.subscribers(["net-third"]) == {"host-1"}
    j.subscribe("host-1", ["net-third"])  # the same set again changes nothing
    assert j.subscribers(["net-third"]) == {"host-1"}
    j.subscribe("host-1", [NET])  # and back on NET only
    assert j.subscribers([NET]) == {"host-1"}
    assert j.subscribers(["net-third"]) == set()
    j.subscribe("host-2", [])  # no instance left on host-2
    assert j.subscribers([OTHER_NET]) == set()
    assert j.subscribers([NET, OTHER_NET, "net-third"]) == {"host-1"}


def test_notifier_journals_and_wakes_the_other_hosts_of_the_network() -> None:
    n = Notifier(coalesce_s=0.01)
    n.dns.subscribe("creator", [NET])
    n.dns.subscribe("peer", [NET])
    n.dns.subscribe("elsewhere", [OTHER_NET])
    before = {h: n.version(h) for h in ("creator", "peer", "elsewhere")}
    n.dns_changed(NET, added=[A], skip="creator")
    assert n.dns.since(NET, n.dns.epoch, 0) == Delta(1, [A], [])
    deadline = time.monotonic() + 5
    while n.version("peer") == before["peer"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert n.version("peer") != before["peer"]
    assert n.version("creator") == before["creator"]
    assert n.version("elsewhere") == before["elsewhere"]


class _Clock:
    """time.monotonic and threading.Timer of the notifier, driven by the test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object]] = []  # (when it fires, its function)

    def monotonic(self) -> float:
        return self.now

    def timer(self, delay: float, fn: object) -> object:
        clock = self

        class _Timer:
            daemon = False

            def start(self) -> None:
                clock.timers.append((clock.now + delay, fn))

            def cancel(self) -> None:
                clock.timers.remove((clock.now + delay, fn))

        return _Timer()

    def run_next(self) -> None:
        """Move to the earliest timer and fire it."""
        self.timers.sort(key=lambda t: t[0])
        at, fn = self.timers.pop(0)
        self.now = max(self.now, at)
        assert callable(fn)
        fn()


def test_dns_wake_ups_are_spread_over_the_period_and_each_host_gets_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("cumulo.services.notifier.time.monotonic", clock.monotonic)
    monkeypatch.setattr("cumulo.services.notifier.threading.Timer", clock.timer)
    draws = iter([1.0, 0.5, 0.75, 0.51])  # each host's share of the period, in order
    monkeypatch.setattr("cumulo.services.notifier.random.uniform", lambda _a, _b: next(draws))
    n = Notifier(coalesce_s=2.0)
    woken: list[tuple[str, float]] = []
    monkeypatch.setattr(n, "_wake", lambda h, content: woken.append((h, clock.now - 100.0)))

    n.notify_soon(["h1", "h2", "h3", "h4"])
    n.notify_soon(["h1", "h2"])  # already due: no second wake-up, no later one
    assert len(clock.timers) == 1  # one timer at a time
    while clock.timers:
        clock.run_next()
    # h2 and h4 are due within DNS_WAKE_GRAIN_S of each other: one timer wakes both.
    assert woken == [("h2", 1.0), ("h4", 1.0), ("h3", 1.5), ("h1", 2.0)]


def test_a_change_within_a_window_wakes_each_host_once_within_it_not_all_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("cumulo.services.notifier.time.monotonic", clock.monotonic)
    monkeypatch.setattr("cumulo.services.notifier.threading.Timer", clock.timer)
    shares = iter([0.5, 0.1, 0.9])  # the hosts' shares of the window, in (set) order
    # A coalesced wake-up at the end of its period; one within a window anywhere in it.
    monkeypatch.setattr("cumulo.services.notifier.random.uniform",
                        lambda low, _high: next(shares) if low == 0 else 1.0)
    n = Notifier(coalesce_s=3.0)
    for h in ("h1", "h2", "h3", "creator"):
        n.dns.subscribe(h, [NET])
    woken: list[tuple[str, float]] = []
    monkeypatch.setattr(n, "_wake", lambda h, content: woken.append((h, clock.now - 100.0)))

    n.notify_soon(["h1"])  # a coalesced change first: h1 due at 3 s, the timer set for then
    n.dns_changed(NET, added=[A], skip="creator", within=0.5)  # then one within 0.5 s
    n.dns_changed(NET, added=[B], skip="creator", within=0.5)  # already due by then: no more
    assert woken == []  # none at once
    while clock.timers:
        clock.run_next()
    # Each host once, at its own moment of the window; h1 came forward from 3 s (the timer
    # was set again, earlier).
    assert sorted(h for h, _ in woken) == ["h1", "h2", "h3"]
    assert [at for _, at in woken] == pytest.approx([0.05, 0.25, 0.45])

    n.dns_changed(NET, added=[C], skip="creator", within=0)  # 0: every other host now
    assert sorted(h for h, at in woken[3:]) == ["h1", "h2", "h3"]


def test_a_change_for_many_hosts_is_spread_wider_and_an_answer_drops_its_wake_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("cumulo.services.notifier.time.monotonic", clock.monotonic)
    monkeypatch.setattr("cumulo.services.notifier.threading.Timer", clock.timer)
    n = Notifier(coalesce_s=3.0)
    peers = [f"h{i}" for i in range(1000)]
    for h in [*peers, "creator"]:
        n.dns.subscribe(h, [NET])
    woken: list[tuple[str, float]] = []
    monkeypatch.setattr(n, "_wake", lambda h, content: woken.append((h, clock.now - 100.0)))

    # 1,000 hosts to wake: over 1,000 / WAKES_PER_S = 5 s, not within 3 s (or 0.5 s) ...
    window = len(peers) / notifier.WAKES_PER_S
    assert window > max(n.coalesce_s, 0.5)
    n.dns_changed(NET, added=[A], skip="creator", within=0.5)
    n.dns_changed(NET, added=[B], skip="creator")
    # ... and the hosts answered meanwhile (their own polls ended) are not woken at all.
    for h in peers[:600]:
        n.answering(h)
    while clock.timers:
        clock.run_next()
    assert sorted(h for h, _ in woken) == sorted(peers[600:])
    at = [t for _, t in woken]
    assert window * notifier.DNS_SPREAD_FROM - notifier.DNS_WAKE_GRAIN_S <= min(at)
    assert max(at) <= window
    # A network on few hosts keeps the short window: 10 hosts are woken within 0.5 s.
    few = [f"s{i}" for i in range(10)]
    for h in few:
        n.dns.subscribe(h, [OTHER_NET])
    woken.clear()
    start = clock.now - 100.0
    n.dns_changed(OTHER_NET, added=[C], within=0.5)
    while clock.timers:
        clock.run_next()
    assert sorted(h for h, _ in woken) == sorted(few)
    assert max(t for _, t in woken) - start <= 0.5


def test_parse_dns_claims_ignores_what_is_malformed() -> None:
    assert agent_networks.parse_dns_claims([f"{NET}:ab12cd34:5", f"{OTHER_NET}:ab12cd34:0"]) == {
        NET: ("ab12cd34", 5), OTHER_NET: ("ab12cd34", 0)}
    for bad in ("x:y:z", "x:y", "x", "", "a:b:c:4", f"{NET}:e:-1", f"{NET}:e:1.5",
                f"{NET}:e:" + "9" * 19, f"{NET}:e:"):
        assert agent_networks.parse_dns_claims([bad]) == {}, bad


# --- through the services ------------------------------------------------------------------


def _new(svc: Services, name: str, network: str | None = None) -> InstanceView:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano", network=network)
    return instances.create(svc, ADMIN, None, req)


def _delete(svc: Services, iid: str) -> None:
    instances.act(svc, ADMIN, None, iid, Action.DELETE)  # generation 2
    assert instances.get(svc, ADMIN, None, iid).state == "deleting"
    agents.report(svc, AGENT, AGENT_HOST, [Observation(id=iid, state="deleted", generation=2)])
    assert all(v.id != iid for v in instances.list_all(svc, ADMIN, None))


def _fetch(svc: Services, claims: list[str] | None = None) -> Assignments:
    return agents.assignments(svc, AGENT, AGENT_HOST, claims)


def _only_net(batch: Assignments) -> NetworkRef:
    (net,) = batch.networks
    return net


def _claim(net: NetworkRef) -> str:
    return f"{net.id}:{net.records_epoch}:{net.records_version}"


def _expected(svc: Services, *views: InstanceView) -> list[DnsRecord]:
    """The records of these instances, by MAC (read from their assignments)."""
    macs = {a.id: a.nics[0].mac for a in _fetch(svc).instances}
    return sorted((DnsRecord(hostname=v.name, fqdn=v.fqdn, ip=v.private_ip or "",
                             mac=macs[v.id]) for v in views), key=lambda r: r.mac)


def _by_mac(records: list[DnsRecord]) -> list[DnsRecord]:
    return sorted(records, key=lambda r: r.mac)


def test_assignments_send_the_full_list_then_only_the_changes(svc: Services) -> None:
    journal = svc.notifier.dns
    a = _new(svc, "a")
    first = _only_net(_fetch(svc))
    assert first.records_since is None and first.records_removed == []
    assert first.records_epoch == journal.epoch
    assert first.records_version == journal.version(first.id) == 1
    rec_a = _expected(svc, a)
    assert first.records == rec_a

    b = _new(svc, "b")
    assert journal.version(first.id) == 2
    rec_b = [r for r in _expected(svc, a, b) if r.hostname == "b"]
    second = _only_net(_fetch(svc, [_claim(first)]))
    assert second.id == first.id and second.records_epoch == journal.epoch
    assert (second.records_since, second.records_version) == (1, 2)
    assert second.records == rec_b and second.records_removed == []

    # Holding the newest version: nothing to send.
    same = _only_net(_fetch(svc, [_claim(second)]))
    assert (same.records_since, same.records_version) == (2, 2)
    assert same.records == [] and same.records_removed == []

    _delete(svc, b.id)
    third = _only_net(_fetch(svc, [_claim(second)]))
    assert (third.records_since, third.records_version) == (2, 3)
    assert third.records == [] and third.records_removed == [rec_b[0].mac]
    # A host that still held the first version learns only that nothing it knows changed
    # (b came and went: a removal of a MAC it never had).
    old = _only_net(_fetch(svc, [_claim(first)]))
    assert (old.records_since, old.records_version) == (1, 3)
    assert old.records == [] and old.records_removed == [rec_b[0].mac]


def test_assignments_send_the_full_list_to_a_claim_they_cannot_answer(svc: Services) -> None:
    journal = svc.notifier.dns
    a = _new(svc, "a")
    first = _only_net(_fetch(svc))
    b = _new(svc, "b")
    everything = _expected(svc, a, b)
    stranger = DnsJournal().epoch  # as an API process before a restart would have said
    for claims in (["x:y:z"], [f"{first.id}:{stranger}:{first.records_version}"],
                   [f"{first.id}:{journal.epoch}:99"], [f"{first.id}:{journal.epoch}:-1"],
                   [f"{first.id}:{journal.epoch}"], [], None,
                   [f"net-other:{journal.epoch}:1"]):
        full = _only_net(_fetch(svc, claims))
        assert full.records_since is None, claims
        assert full.records_removed == [], claims
        assert (full.records_epoch, full.records_version) == (journal.epoch, 2), claims
        assert _by_mac(full.records) == everything, claims


def test_claims_are_answered_per_network(svc: Services) -> None:
    networks.create(svc, ADMIN, None, "second", "192.168.77.0/24", None)
    a = _new(svc, "a")
    c = _new(svc, "c", network="second")
    start = {n.id: n for n in _fetch(svc).networks}
    assert len(start) == 2 and all(n.records_since is None for n in start.values())
    default_id = next(n.id for n in start.values() if n.records[0].hostname == "a")
    second_id = next(n for n in start if n != default_id)
    b = _new(svc, "b")
    # The host claims only its default network: a delta there, the full list of the other.
    got = {n.id: n for n in _fetch(svc, [_claim(start[default_id])]).networks}
    assert got[default_id].records_since == start[default_id].records_version
    assert [r.hostname for r in got[default_id].records] == ["b"]
    assert got[second_id].records_since is None
    assert got[second_id].records == _expected(svc, c)
    assert _by_mac(start[default_id].records + got[default_id].records) == _expected(svc, a, b)


def test_a_book_fed_deltas_holds_what_a_full_list_says(svc: Services) -> None:
    """The agent's loop: claim what the book holds, merge the answer, compare with the
    full list the API would send to a host holding nothing."""
    book = DnsBook()
    made: list[InstanceView] = []

    def step() -> None:
        merged = book.apply(_fetch(svc, book.claims()))
        full = _fetch(svc)
        assert [(n.id, n.records_version) for n in merged.networks] == [
            (n.id, n.records_version) for n in full.networks]
        for m, f in zip(merged.networks, full.networks, strict=True):
            assert m.records_since is None and m.records_removed == []
            assert _by_mac(m.records) == _by_mac(f.records)
        assert book.claims() == [_claim(n) for n in full.networks]

    for name in ("a", "b", "c"):
        made.append(_new(svc, name))
        step()
    _delete(svc, made[1].id)
    step()
    made.append(_new(svc, "d"))  # may take b's freed address, with another MAC
    step()
    _delete(svc, made[0].id)
    _delete(svc, made[2].id)
    step()
    assert [r.hostname for r in book.apply(_fetch(svc, book.claims())).networks[0].records
            ] == ["d"]


def test_a_host_hears_of_the_networks_it_was_last_sent(svc: Services) -> None:
    journal = svc.notifier.dns
    hid = agents.host_id(svc, AGENT, AGENT_HOST)
    a = _new(svc, "a")
    (net_id,) = {n.network_id for i in _fetch(svc).instances for n in i.nics}
    assert journal.subscribers([net_id]) == {hid}
    _delete(svc, a.id)
    assert journal.subscribers([net_id]) == {hid}  # until it fetches its assignments again
    assert _fetch(svc).networks == []
    assert journal.subscribers([net_id]) == set()


def test_claims_past_the_cap_are_ignored() -> None:
    claims = [f"net-{i:017d}:e:1" for i in range(agent_networks.MAX_DNS_CLAIMS + 10)]
    assert len(agent_networks.parse_dns_claims(claims)) == agent_networks.MAX_DNS_CLAIMS
