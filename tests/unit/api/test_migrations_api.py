"""Live migration through the API: admins start, show, list and cancel one (its JSON as the
CLI contract names it); members may not, and read their instance's event log without any
host name."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cumulo.domain.errors import Forbidden
from cumulo.protocol import Observation
from cumulo.services import agents, hosts, image_files
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, AGENT_HOST

PROGRESS = {"disk_bytes_copied", "disk_bytes_total", "ram_bytes_copied", "ram_bytes_total",
            "dirty_pages_rate", "expected_downtime_ms", "passes"}


def test_migrate_show_cancel_and_the_instance_event_log(api: TestClient, svc: Services) -> None:
    hosts.register(svc, ADMIN, name="host-b", zone="local-1a", architectures=["x86_64"],
                   vcpus=4, ram_mib=4096, driver="fake", accel="fake", agent_url="",
                   underlay_ip="10.250.0.2")
    vm = api.post("/v1/instances", json={"name": "vm", "image": "tiny", "type": "t1.nano"})
    assert vm.status_code == 202, vm.text
    vm_id, host = vm.json()["id"], vm.json()["host"]
    other = "host-b" if host == AGENT_HOST else AGENT_HOST
    r = api.post("/v1/instances/vm/migrate", json={"to": other})
    assert (r.status_code, r.json()["code"]) == (409, "invalid_state")  # not running yet
    agents.report(svc, Principal(role=Role.AGENT, host_name=host), host,
                  [Observation(id=vm_id, state="running", generation=1)])
    arriving = Principal(role=Role.AGENT, host_name=other)
    with pytest.raises(Forbidden):  # a host reads only the images of its instances ...
        image_files.file_for(svc, arriving, other, vm.json()["image_id"], "kernel")
    r = api.post("/v1/instances/vm/migrate", json={"to": other})
    assert r.status_code == 202, r.text
    mig = r.json()
    # ... and of those arriving there: it boots the arriving VM's QEMU with its kernel.
    assert image_files.file_for(svc, arriving, other, vm.json()["image_id"], "kernel")
    assert {"id", "instance", "source", "destination", "state", "progress", "downtime_ms",
            "total_s", "reason"} <= mig.keys() and set(mig["progress"]) == PROGRESS
    assert (mig["instance"], mig["source"], mig["destination"], mig["state"]) == (
        "vm", host, other, "preparing")
    again = api.post("/v1/instances/vm/migrate", json={})
    assert (again.status_code, again.json()["code"]) == (409, "migration_in_progress")
    assert [m["id"] for m in api.get("/v1/migrations").json()] == [mig["id"]]
    assert api.get(f"/v1/migrations/{mig['id']}").json()["state"] == "preparing"
    assert api.get("/v1/migrations/mig-nope").json()["code"] == "unknown_migration"
    cancelled = api.post(f"/v1/migrations/{mig['id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"

    token = api.post("/v1/projects/default/tokens").json()["token"]
    member = {"Authorization": f"Bearer {token}"}
    r = api.post("/v1/instances/vm/migrate", json={}, headers=member)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert api.get("/v1/migrations", headers=member).status_code == 403
    seen = api.get("/v1/instances/vm/events", headers=member).json()
    kinds = [e["kind"] for e in seen]
    assert kinds[0] == "created" and "migration_cancelled" in kinds
    assert not any(h in e["detail"] for e in seen for h in (AGENT_HOST, "host-b")), seen
    shown = api.get("/v1/instances/vm/events").json()  # admins: with hosts
    assert any(f"host {host}" in e["detail"] for e in shown), shown
