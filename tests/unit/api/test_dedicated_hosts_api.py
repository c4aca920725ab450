"""Dedicated hosts through the REST API: allocation and its refusals, placement by tenancy
with the scheduler naming dedication, host CPUs of their own per instance, release."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from cumulo.protocol import Observation
from cumulo.services import agents
from cumulo.services.context import Principal, Role, Services
from tests.conftest import stored_state
from tests.unit.api.test_hosts_api import register


def create(api: TestClient, name: str, project: str = "default", **over: Any) -> Any:
    return api.post("/v1/instances", params={"project": project},
                    json={"name": name, "image": "tiny", "type": "t1.nano"} | over)


def client_of(api: TestClient, project: str) -> TestClient:
    """A member of `project` (made if missing)."""
    api.post("/v1/projects", json={"name": project})
    token = api.post(f"/v1/projects/{project}/tokens").json()["token"]
    client = TestClient(api.app)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def allocate(api: TestClient, project: str, **body: Any) -> Any:
    return api.post("/v1/dedicated-hosts", params={"project": project},
                    json={"zone": "local-1a"} | body)


def gone(svc: Services, host: str, iid: str) -> None:
    """The host's agent reports the deleted instance gone."""
    agent = Principal(role=Role.AGENT, host_name=host)
    (a,) = [x for x in agents.assignments(svc, agent, host).instances if x.id == iid]
    agents.report(svc, agent, host, [Observation(id=iid, state="deleted",
                                                 generation=a.generation)])


def test_a_dedicated_host_takes_only_its_projects_dedicated_instances(
        api: TestClient, svc: Services) -> None:
    register(svc, "hv-2", vcpus=4, ram_mib=4096)
    api.post("/v1/projects", json={"name": "team"})
    r = allocate(api, "team")
    assert r.status_code == 201, r.text
    dh = r.json()
    # The first empty enabled host by name; the admin sees which.
    assert dh["id"].startswith("h-") and dh["host"] == "host-a" and dh["state"] == "available"
    assert (dh["project"], dh["zone"], dh["instances"]) == ("team", "local-1a", [])
    assert dh["capacity"] == {"vcpus_total": 4, "vcpus_used": 0, "ram_mib_total": 4096,
                              "ram_mib_used": 0}
    # Shared tenancy never lands on it, not even the owner's.
    assert create(api, "s1").json()["host"] == "hv-2"
    shared = create(api, "s2", "team").json()
    assert (shared["host"], shared["tenancy"], shared["dedicated_host"]) == ("hv-2", "shared",
                                                                             None)
    big = create(api, "d1", "team", type=None, vcpus=2, ram_mib=256, dedicated_host=dh["id"])
    assert big.status_code == 202, big.text
    assert (big.json()["host"], big.json()["tenancy"], big.json()["dedicated_host"]) == (
        "host-a", "dedicated", dh["id"])
    small = create(api, "d2", "team", tenancy="dedicated").json()
    assert (small["host"], small["dedicated_host"]) == ("host-a", dh["id"])
    # Each instance has host CPUs of its own, handed to the agent with its assignment.
    agent = Principal(role=Role.AGENT, host_name="host-a")
    cpus = {a.hostname: a.cpu_set for a in agents.assignments(svc, agent, "host-a").instances}
    assert cpus == {"d1": [0, 1], "d2": [2]}
    shared_cpus = agents.assignments(svc, Principal(role=Role.AGENT, host_name="hv-2"), "hv-2")
    assert [a.cpu_set for a in shared_cpus.instances] == [[], []]
    # Another project: refused naming dedication, by id or by the scheduler.
    r = create(api, "x1", dedicated_host=dh["id"])
    assert r.status_code == 403 and r.json()["code"] == "dedicated_to_another_project"
    assert r.json()["detail"] == f"dedicated host {dh['id']} is dedicated to another project"
    r = create(api, "x2", tenancy="dedicated")
    assert r.status_code == 409 and r.json()["detail"] == (
        "no host fits: zone local-1a has 2 hosts: 1 dedicated to another project, "
        "1 not dedicated to the project")
    api.post("/v1/hosts/hv-2/disable", json={"reason": "maintenance"})
    r = create(api, "x3")
    assert r.json()["detail"] == ("no host fits: zone local-1a has 2 hosts: 1 dedicated to "
                                  "another project, 1 disabled")
    # No overcommit: 4 host CPUs, 3 pinned; a 2-vCPU instance does not fit.
    r = create(api, "d3", "team", type=None, vcpus=2, ram_mib=256, tenancy="dedicated")
    assert r.json()["detail"] == ("no host fits: zone local-1a has 2 hosts: 1 not dedicated "
                                  "to the project, 1 lacks 2 vCPUs (largest free: 1)")
    # Members see their dedicated hosts, not which machine they are.
    team = client_of(api, "team")
    (mine,) = team.get("/v1/dedicated-hosts").json()
    assert (mine["id"], mine["host"], mine["instances"]) == (dh["id"], None, ["d1", "d2"])
    assert mine["capacity"]["vcpus_used"] == 3
    assert team.get("/v1/instances/d1").json()["dedicated_host"] == dh["id"]
    assert client_of(api, "default").get("/v1/dedicated-hosts").json() == []
    # Release: refused while instances are on it, then the host is shared again.
    r = team.post(f"/v1/dedicated-hosts/{dh['id']}/release")
    assert r.status_code == 409 and r.json()["code"] == "dedicated_host_in_use"
    assert r.json()["detail"] == f"dedicated host {dh['id']} still holds instances: d1, d2"
    for name in ("d1", "d2"):
        iid = team.get(f"/v1/instances/{name}").json()["id"]
        assert team.delete(f"/v1/instances/{name}").status_code == 202
        gone(svc, "host-a", iid)
    released = team.post(f"/v1/dedicated-hosts/{dh['id']}/release").json()
    assert (released["state"], released["capacity"]) == ("released", None)
    assert released["released_at"] is not None
    assert create(api, "x3").json()["host"] == "host-a"
    r = team.post(f"/v1/dedicated-hosts/{dh['id']}/release")
    assert r.status_code == 409 and r.json()["code"] == "dedicated_host_released"
    r = create(api, "d4", "team", dedicated_host=dh["id"])
    assert r.status_code == 409 and r.json()["code"] == "dedicated_host_released"


def test_allocation_refusals_change_nothing(api: TestClient, svc: Services) -> None:
    register(svc, "hv-2")
    register(svc, "hv-9", "local-1b")
    api.post("/v1/projects", json={"name": "team"})
    assert create(api, "web").json()["host"] == "host-a"  # the default project's
    before = stored_state(svc)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("team", {"host": "host-a"}, 409, "host_has_other_tenants"),
        ("team", {"host": "nope"}, 404, "unknown_host"),
        ("team", {"host": "hv-9"}, 400, "host_zone_mismatch"),
        ("team", {"zone": "mars-1a"}, 404, "unknown_zone"),
        ("nobody", {}, 404, "unknown_project"),
    ]
    for project, body, status, code in cases:
        r = allocate(api, project, **body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    assert "another project" in allocate(api, "team", host="host-a").json()["detail"]
    assert stored_state(svc) == before
    first = allocate(api, "team").json()
    assert first["host"] == "hv-2"  # the empty one
    r = allocate(api, "team", host="hv-2")
    assert (r.status_code, r.json()["code"]) == (409, "host_already_dedicated")
    r = allocate(api, "team")  # host-a runs an instance: no empty host is left
    assert (r.status_code, r.json()["code"]) == (409, "no_host_available")
    # The project's own instances do not stop it: host-a runs only the default project's.
    assert allocate(api, "default", host="host-a").status_code == 201
    for ref, status, code in (("nope", 400, "invalid_dedicated_host"),
                              ("h-0123456789abcdef0", 404, "unknown_dedicated_host"),
                              ("i-0123456789abcdef0", 400, "invalid_dedicated_host")):
        r = api.get(f"/v1/dedicated-hosts/{ref}", params={"project": "team"})
        assert (r.status_code, r.json()["code"]) == (status, code)
        r = create(api, "z", "team", dedicated_host=ref)
        assert (r.status_code, r.json()["code"]) == (status, code)
    r = create(api, "z", "team", tenancy="sole")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_tenancy")
    r = create(api, "z", "team", tenancy="shared", dedicated_host=first["id"])
    assert (r.status_code, r.json()["code"]) == (400, "invalid_tenancy")
    r = api.get(f"/v1/dedicated-hosts/{first['id']}")  # the default project's view
    assert (r.status_code, r.json()["code"]) == (403, "dedicated_to_another_project")


def test_members_allocate_within_their_quota_and_never_name_the_host(
        api: TestClient, svc: Services) -> None:
    register(svc, "hv-2")
    team = client_of(api, "team")
    r = team.post("/v1/dedicated-hosts", json={"zone": "local-1a"})
    assert r.status_code == 403 and r.json()["code"] == "quota_exceeded"
    assert r.json()["detail"] == "project 'team' would use 1 of 0 dedicated hosts"
    assert api.patch("/v1/projects/team/quotas",
                     json={"limits": {"dedicated_hosts": 1}}).status_code == 200
    r = team.post("/v1/dedicated-hosts", json={"zone": "local-1a", "host": "hv-2"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = team.post("/v1/dedicated-hosts", json={"zone": "local-1a"})
    assert r.status_code == 201 and r.json()["host"] is None
    quota = {q["resource"]: q for q in team.get("/v1/projects/team/quotas").json()["quotas"]}
    assert (quota["dedicated_hosts"]["used"], quota["dedicated_hosts"]["limit"]) == (1, 1)
    r = team.post("/v1/dedicated-hosts", json={"zone": "local-1a"})
    assert r.status_code == 403 and r.json()["detail"] == (
        "project 'team' would use 2 of 1 dedicated hosts")
    # A released host no longer counts.
    team.post(f"/v1/dedicated-hosts/{team.get('/v1/dedicated-hosts').json()[0]['id']}/release")
    assert team.post("/v1/dedicated-hosts", json={"zone": "local-1a"}).status_code == 201


def test_pinned_cpus_are_the_ones_the_hosts_agent_registered(
        api: TestClient, svc: Services) -> None:
    # A machine whose agent may use CPUs 3 and 7: its vCPUs as a shared host are what it
    # registered (16), as a dedicated host the CPUs it can pin to.
    register(svc, "hv-3", "local-1b", vcpus=16, cpus=[7, 3])
    shared = api.get("/v1/hosts/hv-3").json()
    assert shared["vcpus_allocatable"] >= 16
    dh = allocate(api, "default", zone="local-1b").json()
    assert dh["host"] == "hv-3" and dh["capacity"]["vcpus_total"] == 2
    for name in ("p1", "p2"):
        assert create(api, name, zone="local-1b", dedicated_host=dh["id"]).status_code == 202
    agent = Principal(role=Role.AGENT, host_name="hv-3")
    assert [a.cpu_set for a in agents.assignments(svc, agent, "hv-3").instances] == [[3], [7]]
    r = create(api, "p3", zone="local-1b", dedicated_host=dh["id"])
    assert r.json()["detail"] == ("no host fits: zone local-1b has 1 host: 1 lacks 1 vCPUs "
                                  "(largest free: 0)")
    for bad in ([], [-1], [8192]):
        r = api.post("/v1/agent/hosts/register", json={
            "name": "hv-4", "zone": "local-1a", "architectures": ["x86_64"], "vcpus": 2,
            "ram_mib": 1024, "driver": "fake", "accel": "tcg", "cpus": bad})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), r.text
