"""The agent's DNS book: merges the API's record deltas into complete lists, and says what it
holds so that the next answer carries only the changes."""

from __future__ import annotations

import socket
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from cumulo.agent import dns_book
from cumulo.agent.dns_book import MAX_CLAIMS, DnsBook
from cumulo.protocol import Assignments, DnsRecord, NetworkRef
from cumulo.services import agent_networks

N1 = "net-00000000000000001"
N2 = "net-00000000000000002"


def rec(mac_end: int, ip: str, name: str | None = None) -> DnsRecord:
    name = name or f"vm{mac_end}"
    return DnsRecord(hostname=name, fqdn=f"{name}.default.local-1a.cloud.test", ip=ip,
                     mac=f"52:54:00:00:00:{mac_end:02x}")


def net(nid: str = N1, records: list[DnsRecord] | None = None, *, version: int,
        since: int | None = None, removed: list[str] | None = None,
        epoch: str = "e1") -> NetworkRef:
    return NetworkRef(id=nid, project="default", cidr="10.0.0.0/24", gateway="10.0.0.1",
                      dns_domain="default.local-1a.cloud.test", records=records or [],
                      records_epoch=epoch, records_version=version, records_since=since,
                      records_removed=removed or [])


def batch(*nets: NetworkRef) -> Assignments:
    return Assignments(version=42, instances=[], networks=list(nets))


def only(b: Assignments) -> NetworkRef:
    (n,) = b.networks
    return n


def test_a_full_list_then_a_delta_gives_the_complete_sorted_list() -> None:
    book = DnsBook()
    a, b, c = rec(1, "10.0.0.2"), rec(2, "10.0.0.9"), rec(3, "10.0.0.3")
    first = book.apply(batch(net(records=[b, a, c], version=3)))
    assert only(first).records == [a, c, b]  # by address
    assert (only(first).records_since, only(first).records_version) == (None, 3)
    assert book.claims() == [f"{N1}:e1:3"]

    d = rec(4, "10.0.0.10")  # after .9 (by number, not as a string)
    moved_c = rec(3, "10.0.0.100", "vm3")  # c changed address: an upsert by MAC
    merged = only(book.apply(batch(net(records=[d, moved_c], version=6, since=3,
                                       removed=[a.mac]))))
    assert merged.records == [b, d, moved_c]
    assert merged.records_since is None and merged.records_removed == []
    assert merged.records_version == 6
    assert book.claims() == [f"{N1}:e1:6"]

    # An empty delta keeps everything; removing a MAC the book does not hold is harmless.
    again = only(book.apply(batch(net(version=7, since=6, removed=["52:54:00:00:00:ee"]))))
    assert again.records == [b, d, moved_c]
    assert book.claims() == [f"{N1}:e1:7"]


def test_apply_keeps_the_rest_of_the_batch_and_leaves_it_unchanged() -> None:
    book = DnsBook()
    a = rec(1, "10.0.0.2")
    book.apply(batch(net(records=[a], version=1)))
    delta = batch(net(records=[rec(2, "10.0.0.3")], version=2, since=1))
    out = book.apply(delta)
    assert out.version == 42 and out.instances == []
    assert [r.mac for r in only(out).records] == [a.mac, rec(2, "10.0.0.3").mac]
    # The input still says what the API sent.
    assert only(delta).records_since == 1 and len(only(delta).records) == 1


def test_two_records_on_one_address_are_ordered_by_mac() -> None:
    book = DnsBook()
    x, y = rec(9, "10.0.0.5", "x"), rec(8, "10.0.0.5", "y")
    assert only(book.apply(batch(net(records=[x, y], version=2)))).records == [y, x]


def test_claims_list_every_network_held_with_its_epoch_and_version() -> None:
    book = DnsBook()
    assert book.claims() == []
    book.apply(batch(net(N2, [rec(1, "10.0.1.2")], version=5, epoch="e2"),
                     net(N1, [rec(2, "10.0.0.2")], version=3, epoch="e2")))
    assert book.claims() == [f"{N1}:e2:3", f"{N2}:e2:5"]
    # A full list replaces what was held, whatever its version.
    out = book.apply(batch(net(N1, [rec(3, "10.0.0.3")], version=1, epoch="e3"),
                           net(N2, [rec(1, "10.0.1.2")], version=5, since=5, epoch="e2")))
    assert [r.mac for r in out.networks[0].records] == [rec(3, "10.0.0.3").mac]
    assert book.claims() == [f"{N1}:e3:1", f"{N2}:e2:5"]


def test_a_delta_from_another_version_is_not_applied_and_the_claim_is_dropped() -> None:
    book = DnsBook()
    a, b = rec(1, "10.0.0.2"), rec(2, "10.0.0.3")
    book.apply(batch(net(N1, [a, b], version=4), net(N2, [rec(5, "10.0.1.2")], version=1)))
    stray = rec(3, "10.0.0.4")
    out = book.apply(batch(net(N1, [stray], version=9, since=7, removed=[a.mac]),
                           net(N2, version=1, since=1)))
    n1 = out.networks[0]
    assert n1.records == [a, b]  # what the book held: neither the removal nor the addition
    assert n1.records_since is None and n1.records_removed == []
    assert book.claims() == [f"{N2}:e1:1"]  # no claim for N1: the next answer is a full list

    # A delta for N1 now (the API answering a claim it was not sent) is not merged either.
    book.apply(batch(net(N1, [stray], version=10, since=9), net(N2, version=1, since=1)))
    assert book.claims() == [f"{N2}:e1:1"]
    # The full list brings the claim back.
    full = book.apply(batch(net(N1, [b, stray], version=10), net(N2, version=1, since=1)))
    assert full.networks[0].records == [b, stray]
    assert book.claims() == [f"{N1}:e1:10", f"{N2}:e1:1"]


def test_a_delta_from_another_epoch_is_not_applied() -> None:
    book = DnsBook()
    a = rec(1, "10.0.0.2")
    book.apply(batch(net(records=[a], version=4, epoch="old")))
    out = only(book.apply(batch(net(records=[rec(2, "10.0.0.3")], version=5, since=4,
                                    removed=[a.mac], epoch="new"))))
    assert out.records == [a] and out.records_since is None
    assert book.claims() == []


def test_a_delta_for_a_network_the_book_does_not_hold_is_never_claimed() -> None:
    book = DnsBook()
    out = only(book.apply(batch(net(records=[rec(1, "10.0.0.2")], version=3, since=2))))
    assert out.records_since is None and out.records_removed == []
    assert book.claims() == []


def test_networks_absent_from_a_batch_are_dropped() -> None:
    book = DnsBook()
    a = rec(1, "10.0.0.2")
    book.apply(batch(net(N1, [a], version=2), net(N2, [rec(2, "10.0.1.2")], version=3)))
    assert book.claims() == [f"{N1}:e1:2", f"{N2}:e1:3"]
    book.apply(batch(net(N2, version=3, since=3)))  # the host's last VM on N1 is gone
    assert book.claims() == [f"{N2}:e1:3"]
    # Back on N1 later: a delta against what the book held before is not trusted.
    out = book.apply(batch(net(N1, [rec(3, "10.0.0.3")], version=4, since=2),
                           net(N2, version=3, since=3)))
    assert [r.mac for r in out.networks[0].records] == [rec(3, "10.0.0.3").mac]
    assert book.claims() == [f"{N2}:e1:3"]
    book.apply(batch())
    assert book.claims() == []


def test_forget_clears_every_claim() -> None:
    book = DnsBook()
    book.apply(batch(net(N1, [rec(1, "10.0.0.2")], version=2), net(N2, version=0)))
    assert len(book.claims()) == 2
    book.forget()
    assert book.claims() == []
    # After forgetting, a delta is not merged into anything held before.
    out = only(book.apply(batch(net(N1, [rec(2, "10.0.0.3")], version=3, since=2))))
    assert [r.mac for r in out.records] == [rec(2, "10.0.0.3").mac]
    assert book.claims() == []


def test_an_api_without_a_journal_sends_full_lists_and_nothing_is_claimed() -> None:
    book = DnsBook()
    out = only(book.apply(batch(net(records=[rec(2, "10.0.0.3"), rec(1, "10.0.0.2")],
                                    version=0, epoch=""))))
    assert [r.ip for r in out.records] == ["10.0.0.2", "10.0.0.3"]
    assert book.claims() == []


def test_claims_are_capped_so_the_long_poll_url_stays_short() -> None:
    book = DnsBook()
    nets = [net(f"net-{i:017d}", version=1) for i in range(MAX_CLAIMS + 50)]
    book.apply(batch(*nets))
    assert len(book.claims()) == MAX_CLAIMS
    assert MAX_CLAIMS == agent_networks.MAX_DNS_CLAIMS  # the API reads as many as the agent sends


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 40), st.integers(2, 30)),
                                   max_size=6),
                          st.lists(st.integers(0, 40), max_size=4)),
                min_size=1, max_size=12),
       st.sampled_from([0, dns_book.SORT_AGAIN_SHARE, 10**9]))
def test_deltas_patched_in_give_what_sorting_the_whole_list_gives(
        deltas: list[tuple[list[tuple[int, int]], list[int]]], share: int) -> None:
    """The ordered list is patched delta by delta, or sorted again for a large delta (share
    0: always patched, 10**9: always sorted again); lists handed out before never change."""
    with patch.object(dns_book, "SORT_AGAIN_SHARE", share):
        _deltas_merged_in_order(deltas)


def _deltas_merged_in_order(deltas: list[tuple[list[tuple[int, int]], list[int]]]) -> None:
    book = DnsBook()
    truth = {r.mac: r for r in [rec(i, f"10.0.0.{i + 2}") for i in range(0, 40, 3)]}
    got = only(book.apply(batch(net(records=list(truth.values()), version=1))))
    handed_out = [(got.records, list(got.records))]
    for version, (upserts, removed) in enumerate(deltas, start=2):
        added = [rec(m, f"10.0.{ip % 3}.{ip}") for m, ip in upserts]
        gone = [f"52:54:00:00:00:{m:02x}" for m in removed]
        for mac in gone:
            truth.pop(mac, None)
        truth |= {r.mac: r for r in added}
        got = only(book.apply(batch(net(records=added, removed=gone, version=version,
                                        since=version - 1))))
        assert got.records == sorted(truth.values(), key=lambda r: (
            socket.inet_aton(r.ip), r.mac))
        handed_out.append((got.records, list(got.records)))
    assert all(held == copy for held, copy in handed_out)
