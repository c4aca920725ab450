"""Networks across hosts, API side: each network's VNI, the hosts' underlay addresses, and
records that say where each NIC runs, sent to every host serving the network; an instance that
changed host, or a host whose underlay address changed, is announced at once, and a host new to
a network within half a second (not within the DNS coalescing period), so that every host's
VXLAN entries follow."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from cumulo.agent.dns_book import DnsBook
from cumulo.agent.net import plan
from cumulo.db.tables import AddressRow, InstanceRow, NetworkRow
from cumulo.domain.errors import Conflict, InvalidInput
from cumulo.protocol import Assignments, NetworkRef
from cumulo.services import (
    agents,
    hosts,
    instance_create,
    instances,
    networks,
    notifier,
    segments,
)
from cumulo.services.context import Principal, Role, Services
from cumulo.services.views import InstanceView
from tests.conftest import ADMIN, AGENT_HOST

IP_A, IP_B, IP_C = "10.250.0.1", "10.250.0.2", "10.250.0.3"


def _register(svc: Services, name: str, underlay: str | None) -> str:
    return hosts.register(svc, Principal(role=Role.AGENT, host_name=name), name=name,
                          zone="local-1a", architectures=["x86_64", "arm64"], vcpus=4,
                          ram_mib=4096, driver="fake", accel="fake", agent_url="",
                          underlay_ip=underlay)


def _new(svc: Services, name: str) -> InstanceView:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano")
    return instances.create(svc, ADMIN, None, req)


def _poll(svc: Services, host: str, book: DnsBook) -> Assignments:
    who = Principal(role=Role.AGENT, host_name=host)
    return book.apply(agents.assignments(svc, who, host, book.claims()))


def _where(net: NetworkRef) -> dict[str, str]:
    return {r.hostname: r.underlay_ip for r in net.records}


def test_networks_get_distinct_vnis_that_stay(svc: Services) -> None:
    _new(svc, "a")
    for i in range(3):
        networks.create(svc, ADMIN, None, f"n{i}", f"10.77.{i}.0/24", None)
    with svc.db.session() as s:
        vnis = list(s.scalars(select(NetworkRow.vni)))
    assert len(vnis) == 4 == len(set(vnis))
    assert all(segments.FIRST_VNI <= v <= segments.LAST_VNI for v in vnis)


def test_hosts_get_each_network_with_its_vni_and_where_every_nic_runs(svc: Services) -> None:
    a_id = _register(svc, AGENT_HOST, IP_A)
    a = _new(svc, "a")  # the only host yet
    book_a = DnsBook()
    first = _poll(svc, AGENT_HOST, book_a)
    (net,) = first.networks
    with svc.db.session() as s:
        assert net.vni == s.scalar(select(NetworkRow.vni).where(NetworkRow.id == net.id))
    assert _where(net) == {"a": IP_A}

    b_id = _register(svc, "host-b", IP_B)
    seen = svc.notifier.version(a_id)
    b = _new(svc, "b")  # the scheduler spreads: on host-b, new to the network
    assert b.host == "host-b" and a.host == AGENT_HOST
    # host-a is woken within NEW_HOST_WAKE_S (0.5 s), before a coalesced wake-up could come
    # (1.5 s at the earliest): host-b is a new flood target.
    assert svc.notifier.coalesce_s * notifier.DNS_SPREAD_FROM > instance_create.NEW_HOST_WAKE_S
    deadline = time.monotonic() + svc.notifier.coalesce_s * notifier.DNS_SPREAD_FROM
    while svc.notifier.version(a_id) == seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert svc.notifier.version(a_id) > seen
    (net,) = _poll(svc, AGENT_HOST, book_a).networks
    assert _where(net) == {"a": IP_A, "b": IP_B}
    (net_b,) = _poll(svc, "host-b", DnsBook()).networks
    assert _where(net_b) == _where(net) and net_b.vni == net.vni

    # What host-a's data plane wants from it: b's MAC to host-b, host-b in the flood list.
    batch = _poll(svc, AGENT_HOST, book_a)
    (p,) = plan.build(batch.networks, batch.instances, set(), IP_A).nets
    assert p.segment is not None
    assert p.segment.peers == (IP_B,) and p.segment.macs == ((_mac(svc, b.id), IP_B),)
    assert [h.hostname for h in p.dhcp_hosts] == ["a"]

    # b changes host (what a migration will do): every host serving the network is woken at
    # once, with only b's record as the change, and its entries follow.
    c_id = _register(svc, "host-c", IP_C)
    with svc.db.session() as s:
        s.execute(update(InstanceRow).where(InstanceRow.id == b.id).values(host_id=c_id))
    versions = {h: svc.notifier.version(h) for h in (a_id, b_id)}
    segments.announce(svc, [b.id])
    assert all(svc.notifier.version(h) > v for h, v in versions.items())
    raw = agents.assignments(svc, Principal(role=Role.AGENT, host_name=AGENT_HOST),
                             AGENT_HOST, book_a.claims())
    (delta,) = raw.networks
    assert delta.records_since is not None and _where(delta) == {"b": IP_C}
    batch = book_a.apply(raw)
    (p,) = plan.build(batch.networks, _poll(svc, AGENT_HOST, book_a).instances, set(),
                      IP_A).nets
    assert p.segment is not None and p.segment.macs == ((_mac(svc, b.id), IP_C),)
    assert p.segment.peers == (IP_C,)


def test_a_host_whose_underlay_address_changed_is_announced(svc: Services) -> None:
    a_id = _register(svc, AGENT_HOST, IP_A)
    _new(svc, "a")
    _register(svc, "host-b", IP_B)
    _new(svc, "b")
    book = DnsBook()
    _poll(svc, AGENT_HOST, book)
    seen = svc.notifier.version(a_id)
    _register(svc, "host-b", IP_C)  # the same host, restarted with another address
    assert svc.notifier.version(a_id) > seen
    (net,) = _poll(svc, AGENT_HOST, book).networks
    assert _where(net) == {"a": IP_A, "b": IP_C}


def test_a_bad_or_taken_underlay_address_is_refused(svc: Services) -> None:
    _register(svc, AGENT_HOST, IP_A)
    for bad in ("nope", "10.250.0.256", "127.0.0.1", "0.0.0.0", "224.0.0.5", "fe80::1"):
        with pytest.raises(InvalidInput):
            _register(svc, "host-b", bad)
    with pytest.raises(Conflict) as e:
        _register(svc, "host-b", IP_A)
    assert e.value.code == "underlay_ip_taken"
    assert _register(svc, "host-b", IP_B)


def _mac(svc: Services, instance_id: str) -> str:
    with svc.db.session() as s:
        mac: str | None = s.scalar(
            select(AddressRow.mac).where(AddressRow.instance_id == instance_id))
    assert mac is not None, instance_id
    return mac
