"""The conductor's cleaning against a fake BMC (it records the Redfish calls), with the API's
token routes for real: the deploy ISO in wipe mode, the wipe's report; a failed report, a
wipe that never reports, a BMC that fails, an API without deploy URLs. The node is never
`available` unless its wipe reported ok. (The ramdisk's wipe on a real machine:
tests/integration/test_baremetal_deploy_media.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cumulo.api.app import create_app
from cumulo.config import BaremetalSettings
from cumulo.db.tables import EventRow
from cumulo.domain.instance import Action
from cumulo.images import deploy_iso
from cumulo.images.debs import ImageBuildError
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_nodes as nodes
from cumulo.services import instances
from cumulo.services.context import Services
from tests.baremetal_fakes import MEDIA, PROVISION, FakeBmc, clean, deploying_node, node, run_pass
from tests.baremetal_fakes import token as token_of
from tests.conftest import ADMIN


@pytest.fixture
def bmc() -> type[FakeBmc]:
    return FakeBmc.reset()


@pytest.fixture
def cleaning(svc: Services, bmc: type[FakeBmc]) -> Services:
    """Node `bm-1` in `cleaning`: its instance `metal` deleted before its deploy began."""
    deploying_node(svc)
    instances.act(svc, ADMIN, None, "metal", Action.DELETE)
    return svc


def _state(svc: Services) -> tuple[str, str | None, str | None, str | None]:
    n = node(svc)
    return n.state, n.last_error, n.power_state, n.deploy_step


def test_cleaning_boots_the_wipe_ramdisk_and_makes_the_node_available_once_it_reports_ok(
        cleaning: Services, bmc: type[FakeBmc]) -> None:
    svc = cleaning
    assert run_pass(svc) == {"bm-1": "cleaning"}
    token = token_of(bmc)
    assert bmc.calls == ["power off", f"insert {MEDIA}/v1/baremetal/deploy/{token}/deploy.iso",
                         "boot cd once", "power on"]
    assert _state(svc) == ("cleaning", None, "on", "waiting")
    # The instance is gone as the cleaning starts (event `deleted`); the node still cleans.
    assert instances.list_all(svc, ADMIN, None) == [] and node(svc).instance_id is None
    with svc.db.session() as s:
        assert "deleted" in s.scalars(select(EventRow.kind).where(
            EventRow.resource_name == "metal")).all()
    assert nodes.show(svc, ADMIN, "bm-1").instance is None

    api = TestClient(create_app(svc))
    base = f"/v1/baremetal/deploy/{token}"
    # The ISO boots the deploy ramdisk in wipe mode: no image, the report URL with the token.
    r = api.get(f"{base}/deploy.iso")
    assert r.status_code == 200, r.text
    iso = r.content.decode("latin-1")
    assert f"cumulo.mode=wipe cumulo.report={PROVISION}{base}/report cumulo.disk=/dev/vda" in iso
    assert "cumulo.image=" not in iso and "cumulo.erase=full" not in iso
    svc.settings.baremetal.erase = "full"  # the operator's choice: every block zeroed
    assert "cumulo.disk=/dev/vda cumulo.erase=full" in \
        api.get(f"{base}/deploy.iso").content.decode("latin-1")
    r = api.get(f"{base}/image")  # a wipe fetches nothing
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")

    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "cleaning"} and bmc.calls == []  # it waits for the wipe
    assert api.post(f"{base}/report", content=b"ok").status_code == 204
    assert run_pass(svc) == {"bm-1": "available"}
    assert bmc.calls == ["power off", "eject"]
    n = node(svc)
    assert (n.state, n.power_state, n.last_error, n.deploy_step, n.deploy_token,
            n.deploy_report) == ("available", "off", None, None, None, None)
    r = api.post(f"{base}/report", content=b"ok")  # the cleaning is over: its token is dead
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")
    instances.create(svc, ADMIN, None, instances.CreateInstance(  # the node is taken again
        name="metal-again", image="tiny", type="bm1.tiny"))


def test_a_failed_wipe_sends_the_node_to_error_and_a_retry_cleans_it_again(
        cleaning: Services, bmc: type[FakeBmc]) -> None:
    svc = cleaning
    run_pass(svc)
    deploy.report(svc, token_of(bmc), b"error=zeroing the end of /dev/vda failed: I/O error")
    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "error"}
    assert bmc.calls == ["power off", "eject"]
    assert _state(svc) == ("error", "cleaning: the wipe ramdisk reported: zeroing the end of "
                           "/dev/vda failed: I/O error", "off", None)
    assert nodes.retry(svc, ADMIN, "bm-1").state == "cleaning"  # wiped again, not inspected
    clean(svc, bmc)


def test_a_wipe_that_never_reports_fails_at_its_deadline(
        cleaning: Services, bmc: type[FakeBmc]) -> None:
    svc = cleaning
    run_pass(svc)
    token = token_of(bmc)
    later = datetime.now(UTC) + timedelta(seconds=901)
    svc.clock = lambda: later
    r = TestClient(create_app(svc)).post(f"/v1/baremetal/deploy/{token}/report", content=b"ok")
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")  # expired with it
    assert run_pass(svc) == {"bm-1": "error"}
    assert _state(svc) == (
        "error", "cleaning: no report from the wipe ramdisk within 900 s", "off", None)


def test_a_bmc_that_fails_mid_cleaning_gives_error_never_available(
        cleaning: Services, bmc: type[FakeBmc]) -> None:
    bmc.fail_on = "insert"
    assert run_pass(cleaning) == {"bm-1": "error"}
    assert (node(cleaning).last_error or "").startswith(
        f"cleaning: the BMC at http://127.0.0.1:9 refused to insert {MEDIA}/v1/baremetal/")
    assert instances.list_all(cleaning, ADMIN, None) == []  # the instance goes all the same
    # reported ok, then the BMC fails to power off: not available either
    bmc.fail_on = None
    nodes.retry(cleaning, ADMIN, "bm-1")
    run_pass(cleaning)
    deploy.report(cleaning, token_of(bmc), b"ok")
    bmc.fail_on = "eject"
    assert run_pass(cleaning) == {"bm-1": "error"}
    assert (node(cleaning).last_error or "").startswith("cleaning: the BMC at ")


def test_an_api_without_deploy_urls_cannot_wipe_and_says_so(
        cleaning: Services, bmc: type[FakeBmc]) -> None:
    cleaning.settings.baremetal = BaremetalSettings()
    assert run_pass(cleaning) == {"bm-1": "error"}
    assert bmc.calls == ["power off", "eject"]  # powered off all the same
    assert node(cleaning).last_error == (
        "cleaning: this API has no deploy URLs: set [baremetal] media_url and provision_url "
        "(`cumulo up --baremetal-nodes` sets them)")


@pytest.mark.parametrize(("report", "disk"), [
    ("http://10.0.2.100/r x", "/dev/vda"), ("http://h/$(reboot)", "/dev/vda"),
    ("ftp://h/r", "/dev/vda"), ("http://h/r", "/dev/vda;reboot"), ("http://h/r", "vda")])
def test_the_wipe_command_line_takes_only_checked_values(report: str, disk: str) -> None:
    with pytest.raises(ImageBuildError):
        deploy_iso.wipe_cmdline(report, disk)
    assert deploy_iso.wipe_cmdline("http://h/r") == (
        "console=ttyS0 quiet cumulo.mode=wipe cumulo.report=http://h/r cumulo.disk=/dev/vda")
    assert deploy_iso.wipe_cmdline("http://h/r", erase="full") == (
        "console=ttyS0 quiet cumulo.mode=wipe cumulo.report=http://h/r cumulo.disk=/dev/vda"
        " cumulo.erase=full")
    with pytest.raises(ImageBuildError):
        deploy_iso.wipe_cmdline("http://h/r", erase="full;reboot")
