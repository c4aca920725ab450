"""Usage from recorded transitions: a scripted scenario on a clock the test moves (no
sleeping), whose usage lines match the transitions to the second, across an API restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cumulo.api.app import create_app
from cumulo.config import Settings
from cumulo.db.engine import Database
from cumulo.db.tables import UsageIntervalRow, VolumeRow
from cumulo.domain.instance import Action
from cumulo.protocol import Observation, SnapshotObservation, VolumeObservation
from cumulo.services import agents, instances, public_ips, volumes
from cumulo.services.auth import issue_token
from cumulo.services.context import Principal, Role, Services
from cumulo.services.notifier import Notifier
from tests.conftest import ADMIN, AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


class Clock:
    """The services' clock, moved by the test (with sub-second noise metering drops)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at + timedelta(microseconds=654321)

    def to(self, seconds: int) -> None:
        self.at = T0 + timedelta(seconds=seconds)


def _report(svc: Services, iid: str, state: str, gen: int) -> None:
    agents.report(svc, AGENT, AGENT_HOST, [Observation(id=iid, state=state, generation=gen)])


def _volume_report(svc: Services, vid: str, state: str) -> None:
    with svc.db.session() as s:
        row = s.get(VolumeRow, vid)
        assert row is not None
        gen, size = row.generation, row.size_gib
    agents.report(svc, AGENT, AGENT_HOST, [], volumes=[
        VolumeObservation(id=vid, state=state, size_gib=size, generation=gen)])


def _lines(body: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(x["resource"], x["kind"], x["quantity"]): x for x in body["lines"]}


def _amount(seconds: int, per_hour: Decimal) -> str:
    return str((seconds * per_hour / 3600).quantize(Decimal("0.000001")).normalize())


def test_scripted_scenario_matches_the_transitions_to_the_second(svc: Services) -> None:
    clock = Clock(T0)
    svc.clock = clock
    vm = instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="vm", image="tiny", type="t1.small"))  # 5 GiB boot disk; auto public IP
    assert vm.public_ip is not None
    clock.to(30)
    _report(svc, vm.id, "running", 1)  # billing of the type starts
    clock.to(130)
    instances.act(svc, ADMIN, None, vm.id, Action.STOP)  # stopping: no longer billed
    clock.to(140)
    _report(svc, vm.id, "stopped", 2)
    clock.to(190)
    instances.act(svc, ADMIN, None, vm.id, Action.START)  # starting: not yet billed
    clock.to(197)
    _report(svc, vm.id, "running", 3)
    clock.to(200)
    vol = volumes.create(svc, ADMIN, None, "data", 10)
    clock.to(210)
    _volume_report(svc, vol.id, "available")
    clock.to(260)
    volumes.resize(svc, ADMIN, None, "data", 20)
    clock.to(265)
    _volume_report(svc, vol.id, "available")
    clock.to(270)
    snap = volumes.snapshot(svc, ADMIN, None, "data", "snap")
    clock.to(275)
    agents.report(svc, AGENT, AGENT_HOST, [], snapshots=[
        SnapshotObservation(id=snap.id, state="available", size_gib=20)])
    clock.to(300)
    volumes.delete(svc, ADMIN, None, "data")
    clock.to(305)
    _volume_report(svc, vol.id, "deleted")  # volume pays until its host deleted it
    clock.to(400)
    ip = public_ips.allocate(svc, ADMIN, None)
    clock.to(500)
    volumes.delete_snapshot(svc, ADMIN, None, "snap")
    clock.to(510)
    agents.report(svc, AGENT, AGENT_HOST, [], snapshots=[
        SnapshotObservation(id=snap.id, state="deleted")])
    clock.to(1000)
    public_ips.release(svc, ADMIN, None, ip.ip)

    # The API restarts: new services, engine and clock; only the database carries over.
    svc.db.dispose()
    db2 = Database(svc.db.url)
    clock2 = Clock(T0 + timedelta(seconds=1100))
    svc2 = Services(db=db2, settings=svc.settings, notifier=Notifier(), clock=clock2)
    clock2.to(1200)
    instances.act(svc2, ADMIN, None, vm.id, Action.DELETE)  # deleting: compute ends
    clock2.to(1210)
    _report(svc2, vm.id, "deleted", 4)  # its disk and automatic IP end with it
    clock2.to(5000)
    with svc2.db.session() as s:
        token = issue_token(s, Role.ADMIN)
    with TestClient(create_app(svc2)) as api:
        api.headers["Authorization"] = f"Bearer {token}"
        r = api.get("/v1/usage", params={"from": "2026-03-01", "to": "2026-03-02"})
        assert r.status_code == 200, r.text
        body = r.json()
        # A window inside the scenario: only its seconds count.
        part = api.get("/v1/usage", params={"from": "2026-03-01T10:02:30Z",
                                            "to": "2026-03-01T10:04:10+00:00"}).json()
    db2.dispose()

    lines = _lines(body)
    assert {k: v["seconds"] for k, v in lines.items()} == {
        ("vm", "instance", 1): (130 - 30) + (1200 - 197),
        ("vm", "boot_disk", 5): 1210,
        (vm.public_ip, "public_ip", 1): 1210,
        ("data", "volume", 10): 60,
        ("data", "volume", 20): 45,
        ("snap", "snapshot", 20): 240,
        (ip.ip, "public_ip", 1): 600,
    }
    vm_line = lines[("vm", "instance", 1)]
    assert vm_line == {"project": "default", "resource": "vm", "resource_id": vm.id,
                       "kind": "instance", "basis": "type t1.small", "quantity": 1,
                       "seconds": 1103, "price_per_hour": "0.02", "amount": "0.006128",
                       "currency": "USD"}
    assert lines[(ip.ip, "public_ip", 1)]["amount"] == "0.000833"  # 600 s at 0.005/h
    disk = Decimal(5) * Decimal("0.08") / 730
    assert lines[("vm", "boot_disk", 5)]["amount"] == _amount(1210, disk)
    total = sum((Decimal(x["amount"]) for x in body["lines"]), Decimal(0))
    assert body["total"] == str(total.normalize())
    assert (body["from"], body["to"]) == ("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z")
    assert {(x["resource"], x["kind"]): x["seconds"] for x in part["lines"]
            if x["kind"] == "instance"} == {("vm", "instance"): 250 - 197}


def test_a_stale_report_does_not_start_billing(svc: Services) -> None:
    """A report made before the agent saw a stop cannot move the state, nor the meter."""
    clock = Clock(T0)
    svc.clock = clock
    vm = instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="vm", image="tiny", type="t1.nano"))
    instances.act(svc, ADMIN, None, vm.id, Action.STOP)  # generation 2
    clock.to(10)
    _report(svc, vm.id, "running", 1)
    with svc.db.session() as s:
        kinds = set(s.scalars(select(UsageIntervalRow.kind)
                              .where(UsageIntervalRow.resource_id == vm.id)))
    assert kinds == {"boot_disk"}


def test_paused_and_error_are_not_billed_and_a_resize_changes_the_price(svc: Services) -> None:
    clock = Clock(T0)
    svc.clock = clock
    vm = instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="vm", image="tiny", type="t1.nano"))
    _report(svc, vm.id, "running", 1)
    clock.to(10)
    _report(svc, vm.id, "paused", 1)
    clock.to(20)
    _report(svc, vm.id, "running", 1)
    clock.to(30)
    _report(svc, vm.id, "error", 1)
    clock.to(40)
    instances.act(svc, ADMIN, None, vm.id, Action.STOP)
    _report(svc, vm.id, "stopped", 2)
    instances.resize(svc, ADMIN, None, vm.id, "t1.micro")
    instances.act(svc, ADMIN, None, vm.id, Action.START)
    clock.to(50)
    _report(svc, vm.id, "running", 4)
    clock.to(60)
    from cumulo.services import usage
    view = usage.usage(svc, ADMIN, "default", "2026-03-01", "2026-03-02")
    got = {(x.basis, x.seconds) for x in view.lines if x.kind == "instance"}
    assert got == {("type t1.nano", 20), ("type t1.micro", 10)}


def test_a_dedicated_host_pays_while_allocated(api: TestClient, svc: Services) -> None:
    """Allocated -> billed per hour, whatever runs on it; released -> no longer."""
    clock = Clock(T0)
    svc.clock = clock
    r = api.post("/v1/dedicated-hosts", json={"zone": "local-1a"})
    assert r.status_code in (200, 201), r.text
    dh = r.json()
    clock.to(3600)
    assert api.post(f"/v1/dedicated-hosts/{dh['id']}/release").status_code == 200
    clock.to(7200)
    (line,) = api.get("/v1/usage", params={"from": "2026-03-01"}).json()["lines"]
    assert (line["kind"], line["resource_id"], line["seconds"], line["amount"]) == (
        "dedicated_host", dh["id"], 3600, "2")


@pytest.mark.parametrize(("params", "code"), [
    ({"from": "yesterday"}, "invalid_date"),
    ({"to": "2026-13-01"}, "invalid_date"),
    ({"from": "1970-01-01"}, "invalid_date"),
    ({"from": "2026-03-02", "to": "2026-03-01"}, "invalid_period"),
    ({"from": "2026-03-01", "to": "2026-03-01"}, "invalid_period"),
    ({"project": "nope"}, "unknown_project"),
])
def test_bad_periods_are_refused_with_a_stable_code(api: TestClient, params: dict[str, str],
                                                    code: str) -> None:
    r = api.get("/v1/usage", params=params)
    assert r.status_code in (400, 404, 422), r.text
    assert r.json()["code"] == code
    assert "\n" not in r.json()["detail"]


def test_members_see_their_own_project_only(api: TestClient, svc: Services) -> None:
    svc.clock = Clock(T0)
    assert api.post("/v1/projects", json={"name": "other"}).status_code in (200, 201)
    instances.create(svc, ADMIN, "other", instances.CreateInstance(
        name="theirs", image="tiny", type="t1.nano"))
    instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="ours", image="tiny", type="t1.nano"))
    svc.clock = Clock(T0 + timedelta(hours=1))
    token = api.post("/v1/projects/other/tokens").json()["token"]
    member = {"Authorization": f"Bearer {token}"}
    mine = api.get("/v1/usage", headers=member).json()
    assert {x["resource"] for x in mine["lines"]} >= {"theirs"}
    assert {x["project"] for x in mine["lines"]} == {"other"}
    assert api.get("/v1/usage", params={"project": "default"},
                   headers=member).status_code == 403
    every = api.get("/v1/usage").json()  # an admin: every project
    assert {x["project"] for x in every["lines"]} == {"default", "other"}
    assert every["project"] is None
    assert {x["project"] for x in api.get("/v1/usage", params={"project": "other"}
                                          ).json()["lines"]} == {"other"}


def test_price_list_comes_from_the_config(db: Database) -> None:
    settings = Settings.model_validate({
        "prices": {"currency": "EUR", "volume_gib_month": 0.1, "public_ip_hour": "0.004"},
        "instance_types": [{"name": "bm1.large", "vcpus": 8, "ram_mib": 16384,
                            "bandwidth_mbps": 1000, "disk_gib": 100, "price_per_hour": 1.5},
                           {"name": "x1.small", "vcpus": 2, "ram_mib": 2048,
                            "bandwidth_mbps": 100, "disk_gib": 5}]})
    svc = Services(db=db, settings=settings, notifier=Notifier())
    with svc.db.session() as s:
        token = issue_token(s, Role.ADMIN)
    with TestClient(create_app(svc)) as api:
        rows = api.get("/v1/prices", headers={"Authorization": f"Bearer {token}"}).json()
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("instance", "bm1.large")]["price"] == "1.5"
    # No price given: 2 vCPUs x 0.02 + 2 GiB x 0.005 per hour.
    assert by_name[("instance", "x1.small")]["price"] == "0.05"
    assert by_name[("volume", "volume")] | {} == {
        "kind": "volume", "name": "volume", "unit": "GiB-month", "price": "0.1",
        "price_per_hour": "0.000136986", "currency": "EUR"}
    assert by_name[("public_ip", "public IPv4 address")]["price"] == "0.004"
    assert {r["currency"] for r in rows} == {"EUR"}


@pytest.mark.parametrize("prices", [{"currency": "usd"}, {"volume_gib_month": -1},
                                    {"public_ip_hour": "nan"}, {"vcpu_hour": "0.0000000001"}])
def test_bad_prices_in_the_config_are_refused(prices: dict[str, object]) -> None:
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        Settings.model_validate({"prices": prices})
