"""The conductor's deploy steps against a fake BMC (it records the Redfish calls), with the
API's deploy routes for real: the one-time token, the ISO built for it, the image, the
report; a failed report, a deploy that never reports, a BMC that fails, a conductor that
died mid-step; the node is never `active` unless its deploy reported ok."""

from __future__ import annotations

import hashlib
import json
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from cumulo.api.app import create_app
from cumulo.config import BaremetalSettings
from cumulo.db.tables import BaremetalNodeRow, InstanceRow
from cumulo.domain.errors import Conflict
from cumulo.domain.instance import Action
from cumulo.images import wholedisk
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_deploy_steps as steps
from cumulo.services import baremetal_nodes as nodes
from cumulo.services import instances
from cumulo.services.context import Services
from tests.baremetal_fakes import MEDIA, PROVISION, FakeBmc, clean, deploying_node, run_pass
from tests.baremetal_fakes import node as node_of
from tests.baremetal_fakes import token as token_of
from tests.conftest import ADMIN


@pytest.fixture
def bmc() -> type[FakeBmc]:
    return FakeBmc.reset()


@pytest.fixture
def deploying(svc: Services) -> Services:
    return deploying_node(svc)


def _instance(svc: Services) -> tuple[str, str]:
    view = instances.get(svc, ADMIN, None, "metal")
    return view.state, view.state_reason


def test_a_deploy_boots_the_iso_takes_the_report_and_boots_the_node_from_its_disk(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    svc = deploying
    assert run_pass(svc) == {"bm-1": "deploying"}
    token = token_of(bmc)
    assert bmc.calls == ["power off", f"insert {MEDIA}/v1/baremetal/deploy/{token}/deploy.iso",
                         "boot cd once", "power on"]
    node = node_of(svc)
    assert (node.deploy_step, node.power_state) == ("waiting", "on")
    # only the token's sha256 is stored, and it expires with the deploy's timeout
    assert node.deploy_token == hashlib.sha256(token.encode()).hexdigest() != token
    assert node.deploy_deadline is not None
    left = node.deploy_deadline - datetime.now(UTC)
    assert timedelta(seconds=890) < left <= timedelta(seconds=900)
    assert _instance(svc) == ("pending", "deploying: the node writes the image to its disk")
    assert run_pass(svc) == {"bm-1": "deploying"} and len(bmc.calls) == 4  # it waits

    api = TestClient(create_app(svc))  # no credential: the token is the only one
    base = f"/v1/baremetal/deploy/{token}"
    # The ISO, built for this deploy: its kernel command line names the image, its sha256,
    # the report URL and the seed's (test_baremetal_seed.py) on the provisioning network,
    # each with this token.
    r = api.get(f"{base}/deploy.iso")
    assert r.status_code == 200, r.text
    assert r.content[0x8001:0x8006] == b"CD001"  # an ISO 9660 image
    disk = json.loads((wholedisk.ensure_tiny_disk() / "build.json").read_text())
    assert (f"cumulo.image={PROVISION}{base}/image cumulo.sha256={disk['gz_sha256']} "
            f"cumulo.report={PROVISION}{base}/report cumulo.seed={PROVISION}{base}/seed"
            ) in r.content.decode("latin-1")
    # The image: the whole-disk tiny image, gzipped, whose sha256 the ramdisk checks.
    r = api.get(f"{base}/image")
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == disk["gz_sha256"]
    assert zlib.decompressobj(31).decompress(r.content[:65536], 512)[510:] == b"\x55\xaa"  # MBR

    assert api.post(f"{base}/report", content=b"ok").status_code == 204
    assert api.post(f"{base}/report", content=b"ok\n").status_code == 204  # sent again: fine
    r = api.post(f"{base}/report", content=b"error=too late")
    assert (r.status_code, r.json()["code"]) == (409, "deploy_already_reported")

    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "active"}
    assert bmc.calls == ["power off", "eject", "boot disk always", "power on"]
    node = node_of(svc)
    assert (node.state, node.power_state, node.last_error, node.deploy_token,
            node.deploy_step) == ("active", "on", None, None, None)
    assert _instance(svc) == ("running", "")
    # The deploy is over: its token opens nothing any more.
    for r in (api.get(f"{base}/image"), api.post(f"{base}/report", content=b"ok")):
        assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")

    # Deleting the instance cleans the node: its disk wiped (test_baremetal_clean.py).
    instances.act(svc, ADMIN, None, "metal", Action.DELETE)
    clean(svc, bmc)
    assert node_of(svc).instance_id is None


def test_a_wrong_token_opens_nothing_and_a_malformed_report_is_refused(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    run_pass(deploying)
    api = TestClient(create_app(deploying))
    for token in ("0" * 64, "nothex", "A" * 64, "0" * 63):
        for r in (api.get(f"/v1/baremetal/deploy/{token}/image"),
                  api.get(f"/v1/baremetal/deploy/{token}/deploy.iso"),
                  api.post(f"/v1/baremetal/deploy/{token}/report", content=b"ok")):
            assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy"), r.text
    for body in (b"", b"fine", b"okay", b"error=", b"error=bad\x01byte", b"error=" + b"x" * 500,
                 b"error=" + b"x" * 5000):
        r = api.post(f"/v1/baremetal/deploy/{token_of(bmc)}/report", content=body)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_deploy_report"), r.text
    assert node_of(deploying).deploy_report is None
    assert run_pass(deploying) == {"bm-1": "deploying"}


def test_a_failed_report_leaves_node_and_instance_in_error_with_the_reason(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    svc = deploying
    run_pass(svc)
    why = f"the image's sha256 is {'1' * 64}, expected {'0' * 64}: nothing written"
    deploy.report(svc, token_of(bmc), f"error={why}".encode())
    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "error"}
    assert bmc.calls == ["power off", "eject"]  # powered off, media out
    node = node_of(svc)
    reason = f"deploy: the deploy ramdisk reported: {why}"
    assert (node.state, node.last_error, node.power_state, node.deploy_token) == (
        "error", reason, "off", None)
    assert _instance(svc) == ("error", reason)
    # The node keeps its instance until that is deleted: no retry under it ...
    with pytest.raises(Conflict) as e:
        nodes.retry(svc, ADMIN, "bm-1")
    assert e.value.code == "node_in_use"
    # ... and the instance's delete cleans the node back to available.
    instances.act(svc, ADMIN, None, "metal", Action.DELETE)
    clean(svc, bmc)


def test_a_deploy_that_never_reports_fails_at_its_deadline(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    svc = deploying
    run_pass(svc)
    token = token_of(bmc)
    later = datetime.now(UTC) + timedelta(seconds=901)
    svc.clock = lambda: later
    # the token expired with the deadline: the ramdisk's late report is not taken
    r = TestClient(create_app(svc)).post(f"/v1/baremetal/deploy/{token}/report", content=b"ok")
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")
    assert run_pass(svc) == {"bm-1": "error"}
    reason = "deploy: no report from the deploy ramdisk within 900 s"
    assert (node_of(svc).last_error, node_of(svc).power_state) == (reason, "off")
    assert _instance(svc) == ("error", reason)


def test_a_bmc_that_fails_mid_deploy_gives_error_with_the_reason(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    bmc.fail_on = "insert"
    assert run_pass(deploying) == {"bm-1": "error"}
    reason = ("deploy: the BMC at http://127.0.0.1:9 refused to insert "
              f"{MEDIA}/v1/baremetal/deploy/")
    assert (node_of(deploying).last_error or "").startswith(reason)
    assert _instance(deploying)[0] == "error"


def test_a_deploy_without_urls_or_a_whole_disk_image_fails_saying_why(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    deploying.settings.baremetal = BaremetalSettings()
    assert run_pass(deploying) == {"bm-1": "error"}
    assert node_of(deploying).last_error == (
        "deploy: this API has no deploy URLs: set [baremetal] media_url and provision_url "
        "(`cumulo up --baremetal-nodes` sets them)")
    assert not [c for c in bmc.calls if c.startswith(("insert", "power on"))]


def test_a_step_left_by_a_dead_conductor_is_taken_up_after_its_lease(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    svc = deploying
    run_pass(svc)
    first = token_of(bmc)
    # As a conductor that died mid-boot leaves it: step booting, recorded a moment ago.
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(deploy_step="booting"))
    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "deploying"} and bmc.calls == []  # within its lease
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(
            updated_at=datetime.now(UTC) - timedelta(seconds=steps.LEASE_S + 1)))
    assert run_pass(svc) == {"bm-1": "deploying"}
    second = token_of(bmc)
    assert second != first and bmc.calls[0] == "power off"  # the old ISO's run is stopped
    api = TestClient(create_app(svc))
    assert api.post(f"/v1/baremetal/deploy/{first}/report", content=b"ok").status_code == 404
    assert api.post(f"/v1/baremetal/deploy/{second}/report", content=b"ok").status_code == 204
    # A finishing step left behind is done again (idempotent power cycle).
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(
            deploy_step="finishing",
            updated_at=datetime.now(UTC) - timedelta(seconds=steps.LEASE_S + 1)))
    assert run_pass(svc) == {"bm-1": "active"}
    with svc.db.session() as s:
        assert s.scalar(select(InstanceRow.state)) == "running"


def test_deleting_the_instance_mid_deploy_cleans_the_node_and_kills_the_token(
        deploying: Services, bmc: type[FakeBmc]) -> None:
    svc = deploying
    run_pass(svc)
    token = token_of(bmc)
    instances.act(svc, ADMIN, None, "metal", Action.DELETE)
    # the deploy's token died with the delete: its ramdisk's report is not taken
    r = TestClient(create_app(svc)).post(f"/v1/baremetal/deploy/{token}/report", content=b"ok")
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")
    assert clean(svc, bmc) != token
    node = node_of(svc)
    assert (node.deploy_token, node.deploy_step, node.instance_id) == (None, None, None)
