"""Golden dnsmasq files and tc command lines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cumulo.agent.net import dnsmasq, shaping
from cumulo.agent.net.plan import Host, Net

HOSTS = (
    Host("web", "web.p1.z.test", "10.9.1.10", "52:54:00:00:00:0a"),
    Host("db", "db.p1.z.test", "10.9.1.11", "52:54:00:00:00:0b"),
)
NET = Net("net-a", "cbaaaaaaaaaaaa", "10.9.1.0/24", "10.9.1.1", 24, "255.255.255.0",
          "10.9.1.0", "p1.z.test", HOSTS, dhcp_hosts=HOSTS)  # fmt: skip
PATHS = dnsmasq.DnsmasqPaths(Path("/h/net/dnsmasq/net-a"))


def test_dnsmasq_conf() -> None:
    assert dnsmasq.render_conf(NET, PATHS).splitlines() == [
        "# cumulo network net-a (10.9.1.0/24) on cbaaaaaaaaaaaa",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "bind-interfaces",
        "interface=cbaaaaaaaaaaaa",
        "except-interface=lo",
        "user=root",
        "group=root",
        "pid-file=/h/net/dnsmasq/net-a/dnsmasq.pid",
        "dhcp-leasefile=/h/net/dnsmasq/net-a/leases",
        "log-facility=/h/net/dnsmasq/net-a/dnsmasq.log",
        "domain=p1.z.test",
        "local=/p1.z.test/",
        "domain-needed",
        "bogus-priv",
        "dhcp-range=10.9.1.0,static,255.255.255.0,12h",
        "dhcp-hostsfile=/h/net/dnsmasq/net-a/dhcp-hosts",
        "addn-hosts=/h/net/dnsmasq/net-a/addn-hosts",
        "dhcp-option=option:router,10.9.1.1",
        "dhcp-option=option:dns-server,10.9.1.1",
        "dhcp-option=option:domain-search,p1.z.test",
        "dhcp-ignore=tag:!known",
        "dhcp-authoritative",
        "dhcp-rapid-commit",
    ]


def test_a_network_spanning_hosts_leases_only_local_instances_with_the_vxlan_mtu() -> None:
    # db runs on another host: its DHCP is that host's; its name is answered here too.
    net = replace(NET, dhcp_hosts=HOSTS[:1], mtu=1450)
    conf = dnsmasq.render_conf(net, PATHS).splitlines()
    assert conf[-3:] == ["dhcp-authoritative", "dhcp-rapid-commit",
                         "dhcp-option-force=option:mtu,1450"]
    assert "dhcp-ignore=tag:!known" in conf
    assert dnsmasq.render_hosts(net) == "52:54:00:00:00:0a,10.9.1.10,web\n"
    assert dnsmasq.render_addn_hosts(net) == (
        "10.9.1.10 web.p1.z.test web\n10.9.1.11 db.p1.z.test db\n"
    )


def test_dnsmasq_hosts_files() -> None:
    assert dnsmasq.render_hosts(NET) == (
        "52:54:00:00:00:0a,10.9.1.10,web\n52:54:00:00:00:0b,10.9.1.11,db\n"
    )
    assert dnsmasq.render_addn_hosts(NET) == (
        "10.9.1.10 web.p1.z.test web\n10.9.1.11 db.p1.z.test db\n"
    )


def test_no_live_dnsmasq_without_a_pidfile(tmp_path: Path) -> None:
    assert dnsmasq.live_pid(dnsmasq.DnsmasqPaths(tmp_path)) is None
    (tmp_path / "dnsmasq.pid").write_text("1\n")  # pid 1 is not our dnsmasq
    assert dnsmasq.live_pid(dnsmasq.DnsmasqPaths(tmp_path)) is None


def test_shaping_both_directions() -> None:
    assert shaping.shape_lines("ct11111111110", 10) == [
        "qdisc replace dev ct11111111110 root handle 1: tbf rate 10mbit burst 16384 latency 50ms",
        "qdisc add dev ct11111111110 handle ffff: ingress",
        "filter add dev ct11111111110 parent ffff: protocol all prio 1 u32 match u32 0 0 "
        "action mirred egress redirect dev cf11111111110",
        "qdisc replace dev cf11111111110 root handle 1: tbf rate 10mbit burst 16384 latency 50ms",
    ]
    assert shaping.shape_lines("ct11111111110", 0) == []
    assert shaping.cleanup_lines("ct11111111110") == [
        "qdisc del dev ct11111111110 root",
        "qdisc del dev ct11111111110 ingress",
    ]


def test_burst_grows_with_the_rate() -> None:
    assert shaping.burst_bytes(1) == shaping.MIN_BURST
    assert shaping.burst_bytes(10_000) == 1_250_000_000 // 100  # 10 ms at 10 Gbit/s


def test_prune_leases_drops_leases_of_moved_or_gone_addresses() -> None:
    from cumulo.agent.net.dnsmasq import prune_leases
    from cumulo.agent.net.plan import Host, Net

    net = Net(id="net-00000000000000001", bridge="cb0", cidr="10.0.0.0/24", gateway="10.0.0.1",
              prefixlen=24, netmask="255.255.255.0", network_addr="10.0.0.0",
              domain="p.z.cumulo.internal",
              hosts=(Host(hostname="new", fqdn="new.p.z.cumulo.internal", ip="10.0.0.2",
                          mac="52:54:00:00:00:02"),))
    leases = ("1 52:54:00:00:00:01 10.0.0.2 old *\n"      # the address moved to a new MAC
              "1 52:54:00:00:00:02 10.0.0.2 new *\n"      # current
              "1 52:54:00:00:00:03 10.0.0.3 gone *\n")    # instance deleted
    assert prune_leases(leases, net) == "1 52:54:00:00:00:02 10.0.0.2 new *\n"
