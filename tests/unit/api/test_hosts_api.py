"""Hosts through the REST API: the operator's view (admins only), disable/enable, a down
host's instances shown as unknown, and who sees which host an instance is on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

import cumulo
from cumulo.db.tables import HostRow
from cumulo.domain.errors import InvalidInput
from cumulo.protocol import Observation
from cumulo.services import agents, hosts
from cumulo.services.context import Principal, Role, Services

HOST_KEYS = {"name", "zone", "state", "architectures", "accel", "vcpus_total", "vcpus_used",
             "ram_mib_total", "ram_mib_used", "instances", "underlay_ip", "agent_version",
             "last_heartbeat_at"}


def register(svc: Services, name: str, zone: str = "local-1a", **over: Any) -> str:
    args: dict[str, Any] = {"architectures": ["x86_64"], "vcpus": 4, "ram_mib": 4096,
                            "driver": "fake", "accel": "tcg", "agent_url": ""} | over
    return hosts.register(svc, Principal(role=Role.AGENT, host_name=name), name=name,
                          zone=zone, **args)


def create(api: TestClient, name: str, **over: Any) -> Any:
    return api.post("/v1/instances", json={"name": name, "image": "tiny", "type": "t1.nano"}
                    | over)


def silence(svc: Services, name: str) -> None:
    """As if the host's agent stopped talking just over HOST_DOWN_AFTER ago."""
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == name).values(
            last_seen=datetime.now(UTC) - hosts.HOST_DOWN_AFTER - timedelta(seconds=1)))
    svc.notifier.heartbeats.clear()  # the next heartbeat writes at once


def member(api: TestClient) -> TestClient:
    token = api.post("/v1/projects/default/tokens").json()["token"]
    client = TestClient(api.app)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_host_list_and_show_give_the_operator_every_fact(api: TestClient,
                                                         svc: Services) -> None:
    register(svc, "hv-2", "local-1b", architectures=["arm64", "x86_64"], vcpus=2,
             ram_mib=2048, agent_version=cumulo.__version__, underlay_ip="10.250.0.7")
    assert create(api, "web-1").status_code == 202
    listed = api.get("/v1/hosts").json()
    assert [h["name"] for h in listed] == ["host-a", "hv-2"]
    for h in listed:
        assert set(h) >= HOST_KEYS, HOST_KEYS - set(h)
    hv2 = api.get("/v1/hosts/hv-2").json()
    assert hv2 == next(h for h in listed if h["name"] == "hv-2")
    assert (hv2["zone"], hv2["state"], hv2["architectures"], hv2["accel"]) == (
        "local-1b", "up", ["arm64", "x86_64"], "tcg")
    assert (hv2["vcpus_total"], hv2["ram_mib_total"], hv2["instances"]) == (2, 2048, 0)
    assert (hv2["underlay_ip"], hv2["agent_version"]) == ("10.250.0.7", cumulo.__version__)
    assert api.get("/v1/hosts/host-a").json()["underlay_ip"] is None  # registered without
    for bad in ({"underlay_ip": "10.250.0.300"}, {"agent_version": "1.0; rm -rf"}):
        with pytest.raises(InvalidInput):
            register(svc, "hv-2", "local-1b", **bad)
    a = api.get("/v1/hosts/host-a").json()
    assert (a["vcpus_used"], a["ram_mib_used"], a["instances"]) == (1, 128, 1)
    r = api.get("/v1/hosts/nope")
    assert r.status_code == 404 and r.json()["code"] == "unknown_host"


def test_hosts_are_for_admins_only(api: TestClient) -> None:
    user = member(api)
    for method, path in (("GET", "/v1/hosts"), ("GET", "/v1/hosts/host-a"),
                         ("POST", "/v1/hosts/host-a/disable"),
                         ("POST", "/v1/hosts/host-a/enable")):
        r = user.request(method, path, json={} if method == "POST" else None)
        assert r.status_code == 403 and r.json()["code"] == "forbidden", (method, path)
    assert api.get("/v1/hosts/host-a").json()["state"] == "up"


def test_a_disabled_host_gets_nothing_new_and_keeps_what_it_has(api: TestClient,
                                                                svc: Services) -> None:
    register(svc, "hv-2")
    register(svc, "hv-3")
    assert create(api, "old").json()["host"] == "host-a"  # the first of three empty hosts
    r = api.post("/v1/hosts/host-a/disable", json={"reason": "RAM test"})
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["disabled_reason"]) == ("disabled", "RAM test")
    placed = {create(api, f"new-{i}").json()["host"] for i in range(6)}
    assert placed == {"hv-2", "hv-3"}
    assert api.get("/v1/instances/old").json()["host"] == "host-a"  # kept
    assert api.get("/v1/hosts/host-a").json()["instances"] == 1
    for name in ("hv-2", "hv-3"):
        api.post(f"/v1/hosts/{name}/disable", json={})
    r = create(api, "none-left")
    assert r.status_code == 409 and r.json()["code"] == "no_host_fits"
    assert r.json()["detail"] == "no host fits: zone local-1a has 3 hosts: 3 disabled"
    # Zone free capacity counts no disabled host.
    zone = next(z for z in api.get("/v1/zones").json() if z["name"] == "local-1a")
    assert zone["vcpus_free"] == 0 and len(zone["hosts"]) == 3
    enabled = api.post("/v1/hosts/hv-3/enable").json()
    assert (enabled["state"], enabled["disabled_reason"]) == ("up", "")
    assert create(api, "back").json()["host"] == "hv-3"
    bad = api.post("/v1/hosts/hv-2/disable", json={"reason": "two\nlines"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_input"
    assert api.post("/v1/hosts/nope/disable", json={}).json()["code"] == "unknown_host"


def test_a_silent_host_is_down_and_its_instances_unknown_until_it_speaks(
        api: TestClient, svc: Services) -> None:
    assert timedelta(seconds=15) >= hosts.HOST_DOWN_AFTER
    assert hosts.LONG_POLL_MAX * 3 <= hosts.HOST_DOWN_AFTER  # three heartbeats missed
    iid = create(api, "web-1").json()["id"]
    with svc.db.session() as s:
        s.execute(update(HostRow).values(last_seen=datetime.now(UTC)))
    agent = Principal(role=Role.AGENT, host_name="host-a")
    agents.report(svc, agent, "host-a", [Observation(id=iid, state="running", generation=1)])
    assert api.get("/v1/instances/web-1").json()["state"] == "running"
    silence(svc, "host-a")
    assert api.get("/v1/hosts/host-a").json()["state"] == "down"
    shown = api.get("/v1/instances/web-1").json()
    assert shown["state"] == "unknown"
    assert shown["state_reason"] == ("its host is down (no word from its agent); "
                                     "last reported running")
    assert api.get("/v1/instances").json()[0]["state"] == "unknown"
    r = create(api, "web-2")
    assert r.json()["detail"] == "no host fits: zone local-1a has 1 host: 1 down"
    # Its agent polls again: the host is up, the instance shows what it last reported.
    agents.assignments(svc, agent, "host-a")
    assert api.get("/v1/hosts/host-a").json()["state"] == "up"
    assert api.get("/v1/instances/web-1").json()["state"] == "running"


def test_only_admins_see_an_instance_s_host(api: TestClient) -> None:
    created = create(api, "web-1").json()
    assert created["host"] == "host-a" and created["zone"] == "local-1a"
    user = member(api)
    mine = create(user, "web-2").json()
    assert mine["host"] is None and mine["zone"] == "local-1a"
    assert user.get("/v1/instances/web-1").json()["host"] is None
    assert all(i["host"] is None for i in user.get("/v1/instances").json())
    assert {i["host"] for i in api.get("/v1/instances").json()} == {"host-a"}


def test_zone_list_shows_every_zone_with_its_hosts_and_free_capacity(
        api: TestClient, svc: Services) -> None:
    register(svc, "hv-2", vcpus=2, ram_mib=1024)
    register(svc, "hv-3", "local-1b", architectures=["arm64"], vcpus=8, ram_mib=8192)
    register(svc, "hv-4", "local-1b")
    register(svc, "hv-5", "local-1b")
    api.post("/v1/hosts/hv-4/disable", json={"reason": "maintenance"})
    silence(svc, "hv-5")
    assert create(api, "web-1", zone="local-1b", arch="arm64").json()["host"] == "hv-3"
    zones = {z["name"]: z for z in api.get("/v1/zones").json()}
    assert list(zones) == ["local-1a", "local-1b"]
    a, b = zones["local-1a"], zones["local-1b"]
    assert [(h["name"], h["state"]) for h in a["hosts"]] == [("host-a", "up"), ("hv-2", "up")]
    assert [(h["name"], h["state"]) for h in b["hosts"]] == [
        ("hv-3", "up"), ("hv-4", "disabled"), ("hv-5", "down")]
    # The fixture allocates vCPUs 1:1 (settings.cpu_allocation_ratio); RAM is never overcommitted.
    assert (a["vcpus_free"], a["ram_mib_free"]) == (4 + 2, 4096 + 1024)
    assert (b["vcpus_free"], b["ram_mib_free"]) == (8 - 1, 8192 - 128)  # only hv-3 counts
    assert set(b["hosts"][0]) >= HOST_KEYS


def test_a_create_without_a_zone_goes_to_the_api_s_default_zone(api: TestClient,
                                                                 svc: Services) -> None:
    register(svc, "hv-b", "local-1b")
    svc.settings.default_zone = "local-1b"  # [host] (what `cumulo up` runs) stays local-1a
    assert svc.settings.host.zone == "local-1a"
    made = create(api, "web-1").json()
    assert (made["zone"], made["host"]) == ("local-1b", "hv-b")
    assert api.post("/v1/networks", json={"name": "n", "cidr": "10.9.0.0/24"}).json()[
        "zone"] == "local-1b"
