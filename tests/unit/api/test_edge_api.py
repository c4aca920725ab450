"""The edge's table through the API: what each public address leads to (instance, private
address, its host's underlay address, its rules), every change waking the edge's long-poll;
the edge's token reads that and nothing else, and no other token but an admin's reads it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.testclient import TestClient

from cumulo.services import hosts
from cumulo.services.auth import issue_token
from cumulo.services.context import Role, Services
from cumulo.services.notifier import EDGE, Notifier
from tests.conftest import ADMIN


def _table(api: TestClient, token: str, **params: object) -> dict[str, object]:
    r = api.get("/v1/edge/table", params=params, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_the_table_follows_addresses_rules_and_hosts(api: TestClient, svc: Services) -> None:
    with svc.db.session() as s:
        edge = issue_token(s, Role.EDGE)
    hosts.register(svc, ADMIN, name="host-a", zone="local-1a", architectures=["x86_64"],
                   vcpus=4, ram_mib=4096, driver="fake", accel="fake", agent_url="",
                   underlay_ip="10.250.0.1")
    made = [api.post("/v1/instances", json={"name": n, "image": "tiny", "type": "t1.nano"}
                     ).json() for n in ("one", "two")]  # fmt: skip
    first = _table(api, edge)
    entries = {e["public_ip"]: e for e in first["entries"]}  # type: ignore[attr-defined]
    assert {ip: (e["instance_id"], e["private_ip"], e["host_ip"]) for ip, e in entries.items()
            } == {m["public_ip"]: (m["id"], m["private_ip"], "10.250.0.1") for m in made}
    assert all(e["rules"] for e in entries.values())  # the default group's SSH rule
    # and each instance's FQDN (the edge's DNS answers it with the public address)
    assert {ip: e["fqdn"] for ip, e in entries.items()} == {m["public_ip"]: m["fqdn"]
                                                            for m in made}

    # Unchanged: the long-poll waits (its cap), then answers the same version.
    assert _table(api, edge, since=first["version"], wait=0.2)["version"] == first["version"]
    # The first instance's address moved to the second: at once, a new version.
    ip = made[0]["public_ip"]
    r = api.post(f"/v1/public-ips/{ip}/attach", json={"instance": "two", "reassociate": True})
    assert r.status_code == 200, r.text
    moved = _table(api, edge, since=first["version"], wait=5)
    assert moved["version"] != first["version"]
    (e,) = [e for e in moved["entries"] if e["public_ip"] == ip]  # type: ignore[attr-defined]
    assert (e["instance_id"], e["private_ip"]) == (made[1]["id"], made[1]["private_ip"])
    assert len(moved["entries"]) == 1  # type: ignore[arg-type]  # "two" had its own replaced

    # A rule added to the group: a new version, the rule in the entry.
    r = api.post("/v1/security-groups/default/rules", json={"proto": "udp", "port": 5353})
    assert r.status_code == 201, r.text
    ruled = _table(api, edge, since=moved["version"], wait=5)
    assert {"proto": "udp", "port": 5353, "cidr": "0.0.0.0/0"} in (
        ruled["entries"][0]["rules"])  # type: ignore[index]


def test_only_the_edge_and_admins_read_it_and_the_edge_reads_nothing_else(
        api: TestClient, svc: Services) -> None:
    with svc.db.session() as s:
        edge = issue_token(s, Role.EDGE)
        agent = issue_token(s, Role.AGENT, host_name="host-a")
    member = api.post("/v1/projects/default/tokens").json()["token"]
    for token in (agent, member):
        r = api.get("/v1/edge/table", headers={"Authorization": f"Bearer {token}"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert api.get("/v1/edge/table").status_code == 200  # the admin's
    as_edge = {"Authorization": f"Bearer {edge}"}
    for path in ("/v1/instances", "/v1/whoami", "/v1/public-ips"):
        assert api.get(path, headers=as_edge).status_code == 403, path


async def test_every_content_change_of_any_host_wakes_the_edge() -> None:
    n = Notifier()
    changes: tuple[Callable[[], None], ...] = (lambda: n.notify("h1", ["i-a"]),
                                              lambda: n.touch("h2"))
    for change in changes:
        before = n.version(EDGE)
        poll = asyncio.create_task(n.wait(EDGE, before, 30))
        await asyncio.sleep(0.05)
        change()
        assert await asyncio.wait_for(poll, 5) == before + 1
    # A DNS-only wake-up of a host changes nothing the edge serves.
    before = n.version(EDGE)
    n._wake("h1", content=False)
    assert n.version(EDGE) == before
