"""The bare-metal conductor against a real Redfish BMC emulator (HTTP on loopback, sushy on
cumulo's side); no machine is powered on here (see the integration test for that)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cumulo.baremetal.emulated_machine import MachineSpec
from cumulo.db.tables import BaremetalNodeRow
from cumulo.services import baremetal_conductor as conductor
from cumulo.services import baremetal_nodes as nodes
from cumulo.services.context import Services
from tests.baremetal_support import PASSWORD, USER, Bmc, bmc_in_thread
from tests.conftest import ADMIN, free_port


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[Bmc]:
    with bmc_in_thread(tmp_path / "bmc", MachineSpec("n1", 2, 1024, 4),
                       MachineSpec("n2", 1, 512, 2)) as b:
        yield b


@pytest.fixture
def keyed(svc: Services) -> Services:
    svc.server_key = secrets.token_bytes(32)
    return svc


def _enroll(svc: Services, url: str, name: str = "bm-1", system: str = "n1",
            password: str | None = PASSWORD, vcpus: int = 2, ram_mib: int = 1024,
            disk_gib: int = 4) -> nodes.NodeView:
    return nodes.enroll(svc, ADMIN, nodes.Enrollment(
        name=name, zone="local-1a", redfish_url=url, system=system, arch="x86_64",
        vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib,
        username=USER if password is not None else None, password=password))


def test_an_enrolled_node_is_verified_inspected_and_made_available(
        keyed: Services, bmc: Bmc) -> None:
    node = _enroll(keyed, bmc.url)
    assert (node.state, node.last_error, node.facts) == ("enroll", None, {})
    assert conductor.run_pass(keyed) == {"bm-1": "available"}
    node = nodes.show(keyed, ADMIN, "bm-1")
    assert (node.state, node.last_error, node.power_state) == ("available", None, "off")
    # The facts were read over Redfish: n2's (another size) would not match them.
    assert node.facts == {"arch": "x86_64", "vcpus": 2, "ram_mib": 1024, "disk_gib": 4}
    assert conductor.run_pass(keyed) == {}  # nothing more to do


def test_facts_that_differ_from_the_enrollment_give_error_with_the_reason(
        keyed: Services, bmc: Bmc) -> None:
    _enroll(keyed, bmc.url, system="n2")  # enrolled as 2/1024/4; n2 is 1/512/2
    assert conductor.run_pass(keyed) == {"bm-1": "error"}
    node = nodes.show(keyed, ADMIN, "bm-1")
    assert node.last_error == ("inspection: the BMC reports vcpus 1 (enrolled 2), ram 512 MiB "
                               "(enrolled 1024), disk 2 GiB (enrolled 4)")
    assert node.facts["vcpus"] == 1
    # The operator's retry: enroll again (BMC checked, machine inspected), same outcome here.
    retried = nodes.retry(keyed, ADMIN, "bm-1")
    assert (retried.state, retried.last_error) == ("enroll", None)
    assert conductor.run_pass(keyed) == {"bm-1": "error"}


@pytest.mark.parametrize(("system", "password", "reason"), [
    ("n1", "wrong", "refused the credentials"),
    ("n9", PASSWORD, "has no system /redfish/v1/Systems/n9"),
])
def test_a_bmc_that_refuses_gives_error_with_the_reason(
        keyed: Services, bmc: Bmc, system: str, password: str, reason: str) -> None:
    _enroll(keyed, bmc.url, system=system, password=password)
    assert conductor.run_pass(keyed) == {"bm-1": "error"}
    node = nodes.show(keyed, ADMIN, "bm-1")
    assert node.last_error is not None and reason in node.last_error, node.last_error
    assert password not in node.last_error


def test_a_bmc_that_does_not_answer_gives_error_with_the_reason(keyed: Services) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    _enroll(keyed, url)
    assert conductor.run_pass(keyed) == {"bm-1": "error"}
    node = nodes.show(keyed, ADMIN, "bm-1")
    assert node.last_error == f"the BMC at {url} did not answer (read the power state): " \
                              "connection refused"


def test_the_password_is_stored_sealed_and_never_shown(keyed: Services, bmc: Bmc) -> None:
    node = _enroll(keyed, bmc.url)
    assert PASSWORD not in node.model_dump_json()
    with keyed.db.session() as s:
        row = s.scalar(select(BaremetalNodeRow))
        assert row is not None and row.bmc_password is not None
        assert PASSWORD.encode() not in row.bmc_password
        # Sealed for this row: moved to another node's row it does not open.
        s.execute(update(BaremetalNodeRow).values(id="bmn-other"))
    assert conductor.run_pass(keyed) == {"bm-1": "error"}
    assert "does not open" in (nodes.show(keyed, ADMIN, "bm-1").last_error or "")


def test_a_node_left_mid_step_by_a_dead_conductor_is_finished_by_the_next(
        keyed: Services, bmc: Bmc) -> None:
    _enroll(keyed, bmc.url)
    with keyed.db.session() as s:  # as a conductor that died while inspecting left it
        s.execute(update(BaremetalNodeRow).values(state="inspecting", generation=7))
    assert conductor.run_pass(keyed) == {"bm-1": "available"}


def test_a_step_that_lost_a_race_writes_nothing(keyed: Services, bmc: Bmc) -> None:
    _enroll(keyed, bmc.url)
    [work] = conductor.pending(keyed)
    nodes.delete(keyed, ADMIN, "bm-1")  # the operator deletes it while the BMC is asked
    assert conductor.step(keyed, work) is None  # its result is dropped ...
    assert nodes.show(keyed, ADMIN, "bm-1").state == "deleting"  # ... the delete stands
    assert conductor.run_pass(keyed) == {"bm-1": "deleted"}
    assert nodes.list_nodes(keyed, ADMIN) == []


def test_a_deleted_node_with_a_dead_bmc_is_still_removed(keyed: Services) -> None:
    _enroll(keyed, f"http://127.0.0.1:{free_port()}")
    conductor.run_pass(keyed)
    assert nodes.delete(keyed, ADMIN, "bm-1").state == "deleting"
    assert conductor.run_pass(keyed) == {"bm-1": "deleted"}
    assert nodes.list_nodes(keyed, ADMIN) == []
