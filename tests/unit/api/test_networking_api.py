"""Networks, IPAM, key pairs, security groups and public IPs (control plane)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cumulo.domain.netaddr import public_dns_address
from cumulo.protocol import Observation
from cumulo.services import agents
from cumulo.services.context import Principal, Role, Services
from tests.conftest import AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)


def make(api: TestClient, name: str, **over: Any) -> dict[str, Any]:
    r = api.post("/v1/instances", json={"name": name, "image": "tiny", "type": "t1.nano"} | over)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def test_instances_get_an_address_a_public_ip_and_an_fqdn(api: TestClient) -> None:
    a, b = make(api, "a"), make(api, "b")
    assert a["fqdn"] == "a.default.local-1a.cumulo.internal"
    assert a["network"] == "default" and a["security_groups"] == ["default"]
    assert a["private_ip"] != b["private_ip"]
    assert a["public_ip"].startswith("127.100.") and a["public_ip"] != b["public_ip"]
    net = api.get("/v1/networks").json()[0]
    assert net["is_default"] and net["instances"] == 2 and net["cidr"].startswith("10.")
    assert a["private_ip"] != net["gateway"]


def test_addresses_are_released_only_when_the_agent_confirms_deletion(
    api: TestClient, svc: Services
) -> None:
    a = make(api, "a")
    api.delete(f"/v1/instances/{a['id']}")

    def public_ips() -> list[str]:
        return [p["ip"] for p in api.get("/v1/public-ips").json()]

    # still reserved while the VM may still run
    r = api.post("/v1/instances", json={"name": "b", "image": "tiny", "type": "t1.nano",
                                        "private_ip": a["private_ip"]})
    assert r.status_code == 409 and r.json()["code"] == "ip_in_use", r.text
    assert a["public_ip"] in public_ips()
    agents.report(svc, AGENT, AGENT_HOST, [Observation(id=a["id"], state="deleted",
                                                       generation=2)])
    assert a["public_ip"] not in public_ips()
    # free again: it can be asked for (a new instance gets the next one: see test_addresses)
    assert make(api, "c", private_ip=a["private_ip"])["private_ip"] == a["private_ip"]
    make(api, "d")
    assert [n["instances"] for n in api.get("/v1/networks").json()] == [2]


def test_user_networks_and_bad_cidrs(api: TestClient) -> None:
    r = api.post("/v1/networks", json={"name": "lab", "cidr": "192.168.50.0/24"})
    assert r.status_code == 201 and r.json()["gateway"] == "192.168.50.1"
    before = api.get("/v1/networks").json()
    for cidr, code in (("192.168.50.128/25", "cidr_overlap"), ("192.168.0.0/16", "cidr_overlap"),
                       ("8.8.8.0/24", "invalid_cidr"), ("10.0.0.1/24", "invalid_cidr"),
                       ("nonsense", "invalid_cidr"), ("10.0.0.0/30", "invalid_cidr"),
                       ("127.0.0.0/24", "invalid_cidr"), ("fd00::/64", "invalid_cidr")):
        r = api.post("/v1/networks", json={"name": "x", "cidr": cidr})
        assert r.json()["code"] == code, (cidr, r.text)
    assert api.get("/v1/networks").json() == before
    vm = make(api, "on-lab", network="lab", private_ip="192.168.50.77")
    assert vm["private_ip"] == "192.168.50.77" and vm["network"] == "lab"
    for ip, code in (("192.168.51.5", "ip_outside_network"), ("192.168.50.1", "ip_reserved"),
                     ("192.168.50.77", "ip_in_use"), ("192.168.50.255", "ip_outside_network"),
                     ("bogus", "invalid_ip")):
        r = api.post("/v1/instances", json={"name": "x", "image": "tiny", "type": "t1.nano",
                                            "network": "lab", "private_ip": ip})
        assert r.json()["code"] == code, (ip, r.text)
    assert len(api.get("/v1/instances").json()) == 1
    assert api.delete("/v1/networks/lab").json()["code"] == "network_in_use"


def _ssh_keygen(tmp_path: Path) -> str:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@x", "-f",
                    str(key)], check=True)
    return (tmp_path / "k.pub").read_text()


def test_keypairs(api: TestClient, tmp_path: Path) -> None:
    pub = _ssh_keygen(tmp_path)
    r = api.post("/v1/keypairs", json={"name": "mine", "public_key": pub})
    assert r.status_code == 201, r.text
    assert r.json()["fingerprint"].startswith("SHA256:") and r.json()["private_key"] is None
    assert r.json()["public_key"] == " ".join(pub.split()[:2])  # comment dropped
    made = api.post("/v1/keypairs", json={"name": "made"}).json()
    assert made["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert all(k["private_key"] is None for k in api.get("/v1/keypairs").json())
    for bad in ("ssh-ed25519 AAAA", "not a key", "ssh-rsa AAAAB3NzaC1yc2E=", "",
                pub + "\nssh-ed25519 AAAAC3Nza extra"):
        r = api.post("/v1/keypairs", json={"name": "bad", "public_key": bad})
        assert r.status_code == 400 and r.json()["code"] == "invalid_key", bad
    assert api.post("/v1/keypairs", json={"name": "mine", "public_key": pub}).json()["code"] \
        == "name_taken"
    vm = make(api, "k", keys=["mine", "made"])
    assert vm["key_names"] == ["mine", "made"]
    assert api.post("/v1/instances", json={"name": "z", "image": "tiny", "type": "t1.nano",
                                           "keys": ["ghost"]}).json()["code"] == "unknown_keypair"


def test_security_groups_and_what_agents_receive(api: TestClient, svc: Services) -> None:
    groups = api.get("/v1/security-groups").json()
    assert [(r["proto"], r["port"]) for r in groups[0]["rules"]] == [("tcp", 22), ("icmp", None)]
    api.post("/v1/security-groups", json={"name": "web"})
    vm = make(api, "w", security_groups=["default", "web"])
    d = agents.assignments(svc, AGENT, AGENT_HOST)
    (a,), nets = d.instances, d.networks
    assert [(r.proto, r.port) for r in a.ingress] == [("tcp", 22), ("icmp", None)]
    assert a.public_ip == vm["public_ip"] and a.fqdn == vm["fqdn"]
    assert a.nics[0].ip == vm["private_ip"] and a.bandwidth_mbps == 100
    assert nets[0].records[0].fqdn == vm["fqdn"]
    assert nets[0].dns_domain == "default.local-1a.cumulo.internal"
    version = svc.notifier.version(a_host(svc))
    g = api.post("/v1/security-groups/web/rules", json={"proto": "tcp", "port": 8080})
    assert g.status_code == 201
    assert svc.notifier.version(a_host(svc)) > version  # the agent is woken at once
    d = agents.assignments(svc, AGENT, AGENT_HOST)
    (a,), _ = d.instances, d.networks
    assert ("tcp", 8080, "0.0.0.0/0") in [(r.proto, r.port, r.cidr) for r in a.ingress]
    rule_id = g.json()["rules"][0]["id"]
    bad = [({"proto": "gre"}, "invalid_protocol"), ({"proto": "tcp", "port": 0}, "invalid_port"),
           ({"proto": "tcp", "port": 70000}, "invalid_port"),
           ({"proto": "icmp", "port": 8}, "invalid_port"),
           ({"proto": "tcp", "cidr": "10.0.0.1/8"}, "invalid_cidr"),
           ({"proto": "tcp", "port": 8080}, "duplicate_rule")]
    for body, code in bad:
        assert api.post("/v1/security-groups/web/rules", json=body).json()["code"] == code
    # A description is shown as is by the CLI: no control characters, no silent truncation.
    for description in ("\x1b[2Jgotcha", "x" * 201):
        r = api.post("/v1/security-groups", json={"name": "odd", "description": description})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), r.text
    assert "odd" not in [g["name"] for g in api.get("/v1/security-groups").json()]
    assert api.delete("/v1/security-groups/web").json()["code"] == "group_in_use"
    r = api.delete(f"/v1/security-groups/web/rules/{rule_id}")
    assert r.status_code == 200 and r.json()["rules"] == []


def a_host(svc: Services) -> str:
    return agents.host_id(svc, AGENT, AGENT_HOST)


def test_public_ips(api: TestClient) -> None:
    a, b = make(api, "a"), make(api, "b")
    ip = api.post("/v1/public-ips").json()["ip"]
    assert api.post(f"/v1/public-ips/{ip}/attach", json={"instance": "a"}).json()["instance"] \
        == "a"
    assert api.get("/v1/instances/a").json()["public_ip"] == ip
    ips = {p["ip"]: p for p in api.get("/v1/public-ips").json()}
    assert a["public_ip"] not in ips  # a's auto IP was given back
    # Taking it from a, or replacing an allocated address, needs --reassociate; refused
    # attaches change nothing.
    r = api.post(f"/v1/public-ips/{ip}/attach", json={"instance": "b"})
    assert (r.status_code, r.json()["code"]) == (409, "ip_in_use"), r.text
    assert "attached to instance 'a'" in r.json()["detail"]
    other = api.post("/v1/public-ips").json()["ip"]
    r = api.post(f"/v1/public-ips/{other}/attach", json={"instance": "a"})
    assert (r.status_code, r.json()["code"]) == (409, "ip_in_use"), r.text
    assert f"already has public IP {ip}" in r.json()["detail"]
    assert api.get("/v1/instances/a").json()["public_ip"] == ip
    assert api.get("/v1/instances/b").json()["public_ip"] == b["public_ip"]
    assert {p["ip"]: p["instance"] for p in api.get("/v1/public-ips").json()}[other] is None
    api.delete(f"/v1/public-ips/{other}")
    r = api.post(f"/v1/public-ips/{ip}/attach", json={"instance": "b", "reassociate": True})
    assert r.status_code == 200 and r.json()["instance"] == "b"  # moved
    assert api.get("/v1/instances/a").json()["public_ip"] is None
    assert api.get("/v1/instances/b").json()["public_ip"] == ip
    assert b["public_ip"] not in {p["ip"] for p in api.get("/v1/public-ips").json()}
    assert api.delete(f"/v1/public-ips/{ip}").json()["code"] == "attached"
    api.post(f"/v1/public-ips/{ip}/detach")
    assert api.post(f"/v1/public-ips/{ip}/detach").json()["code"] == "not_attached"
    assert api.delete(f"/v1/public-ips/{ip}").status_code == 204
    assert api.post("/v1/public-ips/1.2.3.4/attach",
                    json={"instance": "a"}).json()["code"] == "unknown_public_ip"
    assert api.post("/v1/public-ips/zzz/detach").json()["code"] == "invalid_ip"


@pytest.mark.parametrize("pool", ["10.0.0.0/16", "127.0.0.0/8"])
def test_public_pool_must_be_a_loopback_slice(pool: str) -> None:
    from cumulo.config import load_settings
    from cumulo.domain.errors import InvalidInput

    path = Path("/tmp") / f"cumulo-cfg-{abs(hash(pool))}.toml"
    path.write_text(f'[network]\npublic_pool = "{pool}"\n')
    with pytest.raises(InvalidInput):
        load_settings(path)
    path.unlink()


def test_the_pools_last_usable_address_is_the_edges_dns_never_an_instances(
        api: TestClient, svc: Services) -> None:
    svc.settings.network.public_pool = "127.100.7.0/29"  # .1 to .6; .6: the DNS
    assert public_dns_address(svc.settings.network.public_pool) == "127.100.7.6"
    got = [api.post("/v1/public-ips").json() for _ in range(6)]
    assert sorted(g["ip"] for g in got[:5]) == [f"127.100.7.{i}" for i in range(1, 6)]
    assert got[5]["code"] == "insufficient_capacity"
