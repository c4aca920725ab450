"""A bm1 server on its project's network: a node with a port (its NIC's MAC, read at
inspection, and the host it is cabled to) gets an address with that MAC, its security
groups and a public IP at create; its port host is assigned the NIC as a port without a VM
while the node is active (never as a VM to run), its DNS record and the edge's entry point
at that host; a node with no port refuses network options."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select, update

from cumulo.agent.dns_book import DnsBook
from cumulo.agent.net import names, plan
from cumulo.db.tables import AddressRow, BaremetalNodeRow, HostRow
from cumulo.domain.errors import InvalidInput
from cumulo.domain.instance import Action
from cumulo.protocol import Assignments
from cumulo.services import agents, edge_table, hosts, instances, public_ips, security_groups
from cumulo.services import baremetal_nodes as nodes
from cumulo.services.context import Principal, Role, Services
from cumulo.services.notifier import EDGE
from cumulo.services.views import InstanceView
from tests.baremetal_support import PASSWORD, USER
from tests.conftest import ADMIN, AGENT_HOST

MAC = "02:aa:bb:cc:dd:01"
UNDERLAY = "10.250.0.7"


@pytest.fixture
def keyed(svc: Services) -> Services:
    svc.server_key = secrets.token_bytes(32)
    hosts.register(svc, Principal(role=Role.AGENT, host_name=AGENT_HOST), name=AGENT_HOST,
                   zone="local-1a", architectures=["x86_64"], vcpus=4, ram_mib=4096,
                   driver="fake", accel="fake", agent_url="", underlay_ip=UNDERLAY)
    return svc


def _node(svc: Services, name: str = "bm-1", *, port_host: str | None = AGENT_HOST,
          mac: str | None = MAC) -> None:
    """An enrolled node made `available` as if inspected (its MAC read)."""
    nodes.enroll(svc, ADMIN, nodes.Enrollment(
        name=name, zone="local-1a", redfish_url="http://127.0.0.1:9", system=name,
        arch="x86_64", vcpus=1, ram_mib=256, disk_gib=2, username=USER, password=PASSWORD,
        port_host=port_host))
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).where(BaremetalNodeRow.name == name)
                  .values(state="available", mac=mac))


def _state(svc: Services, state: str, name: str = "bm-1") -> None:
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).where(BaremetalNodeRow.name == name)
                  .values(state=state))


def _create(svc: Services, name: str = "metal", /, **opts: object) -> InstanceView:
    return instances.create(svc, ADMIN, None, instances.CreateInstance(
        name=name, image="tiny", type="bm1.tiny", **opts))  # type: ignore[arg-type]


def _poll(svc: Services, book: DnsBook) -> Assignments:
    who = Principal(role=Role.AGENT, host_name=AGENT_HOST)
    return book.apply(agents.assignments(svc, who, AGENT_HOST, book.claims()))


@pytest.mark.parametrize(("opts", "flag"), [
    ({"network": "default"}, "--network"),
    ({"private_ip": "10.64.0.9"}, "--private-ip"),
    ({"security_groups": ["default"]}, "--security-group"),
])
@pytest.mark.parametrize("missing", ["mac", "port_host"])
def test_a_node_without_a_port_refuses_network_options_and_takes_nothing(
        keyed: Services, opts: dict[str, object], flag: str, missing: str) -> None:
    _node(keyed, **{missing: None})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=flag) as e:
        _create(keyed, **opts)
    assert e.value.code == "node_has_no_port"
    assert [n.state for n in nodes.list_nodes(keyed, ADMIN)] == ["available"]
    assert instances.list_all(keyed, ADMIN, None) == []
    made = _create(keyed)  # without them, the server is made, with no network
    assert (made.network, made.private_ip, made.public_ip) == (None, None, None)


def test_a_node_with_a_port_puts_its_server_on_the_network_with_its_own_mac(
        keyed: Services) -> None:
    _node(keyed)
    security_groups.create(keyed, ADMIN, None, "web")
    security_groups.add_rule(keyed, ADMIN, None, "web", "tcp", 22, "0.0.0.0/0")
    inst = _create(keyed, private_ip="10.64.0.50", security_groups=["web"])
    assert (inst.network, inst.private_ip, inst.security_groups, inst.host) == (
        "default", "10.64.0.50", ["web"], None)
    assert inst.public_ip is not None
    with keyed.db.session() as s:
        assert s.scalar(select(AddressRow.mac).where(AddressRow.ip == "10.64.0.50")) == MAC
    shown = instances.get(keyed, ADMIN, None, "metal")
    assert (shown.private_ip, shown.public_ip) == ("10.64.0.50", inst.public_ip)


def test_the_port_host_plugs_the_nic_while_the_node_is_active_and_never_runs_it(
        keyed: Services) -> None:
    _node(keyed)
    inst = _create(keyed)  # the default group: ICMP and SSH from anywhere
    book = DnsBook()
    deploying = _poll(keyed, book)
    assert (deploying.instances, deploying.ports) == ([], [])  # deploying: on no network
    _state(keyed, "active")
    active = _poll(keyed, book)
    assert active.instances == []  # no VM to run: nothing counts against its capacity
    (port,) = active.ports
    assert port.id == inst.id
    assert [(n.mac, n.ip) for n in port.nics] == [(MAC, inst.private_ip)]
    assert {(r.proto, r.port) for r in port.ingress} >= {("icmp", None), ("tcp", 22)}
    (net,) = active.networks
    assert {r.hostname: (r.mac, r.underlay_ip) for r in net.records} == {
        "metal": (MAC, UNDERLAY)}
    # The host's data plane: its tap (named after the MAC) on the bridge, answered by DHCP.
    p = plan.build(active.networks, [], set(), UNDERLAY, ports=active.ports)
    (nic,) = p.nics
    assert (nic.tap, nic.ip, nic.mac) == (names.port_tap_name(MAC), inst.private_ip, MAC)
    assert [h.mac for h in p.nets[0].dhcp_hosts] == [MAC]
    # Deleted: the node is cleaning, the port is gone (the agent unplugs its tap).
    instances.act(keyed, ADMIN, None, "metal", Action.DELETE)
    assert _poll(keyed, book).ports == []


def test_the_edge_routes_its_public_ip_to_the_port_host(keyed: Services) -> None:
    _node(keyed)
    inst = _create(keyed)
    (entry,) = edge_table.entries(keyed, Principal(role=Role.EDGE))
    assert (entry.public_ip, entry.private_ip, entry.host_ip, entry.instance_id) == (
        inst.public_ip, inst.private_ip, UNDERLAY, inst.id)
    assert entry.fqdn == inst.fqdn


def test_a_rule_change_wakes_the_port_host_and_an_address_change_the_edge(
        keyed: Services) -> None:
    _node(keyed)
    _create(keyed)
    with keyed.db.session() as s:
        (host_id,) = s.scalars(select(HostRow.id).where(HostRow.name == AGENT_HOST))
    before = keyed.notifier.version(host_id)
    security_groups.add_rule(keyed, ADMIN, None, "default", "udp", 53, "10.0.0.0/8")
    assert keyed.notifier.version(host_id) > before  # it enforces the server's rules
    edge = keyed.notifier.version(EDGE)
    ip = public_ips.allocate(keyed, ADMIN, None).ip
    public_ips.attach(keyed, ADMIN, None, ip, "metal")
    assert keyed.notifier.version(EDGE) > edge
    (entry,) = edge_table.entries(keyed, Principal(role=Role.EDGE))
    assert (entry.public_ip, entry.host_ip) == (ip, UNDERLAY)
