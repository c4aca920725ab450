"""bm1.* instances: a create takes a fitting `available` node in its own transaction (never
one node twice), what is for VMs only is refused, and a delete cleans the node back to
`available` (its BMC the Redfish emulator on loopback; no machine is powered on here)."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cumulo.baremetal.emulated_machine import MachineSpec
from cumulo.db.tables import BaremetalNodeRow, EventRow, InstanceRow
from cumulo.domain.errors import Conflict, CumuloError, InsufficientCapacity, InvalidInput
from cumulo.domain.instance import Action
from cumulo.services import baremetal_conductor as conductor
from cumulo.services import baremetal_nodes as nodes
from cumulo.services import catalogue, instances, volumes
from cumulo.services.context import Services
from cumulo.services.views import InstanceView
from tests.baremetal_support import PASSWORD, USER, bmc_in_thread
from tests.conftest import ADMIN


@pytest.fixture
def keyed(svc: Services) -> Services:
    svc.server_key = secrets.token_bytes(32)
    return svc


def _node(svc: Services, name: str, url: str = "http://127.0.0.1:9", system: str = "n1",
          vcpus: int = 1, ram_mib: int = 256, disk_gib: int = 2, arch: str = "x86_64",
          zone: str = "local-1a") -> None:
    """An enrolled node made `available` as if inspected."""
    nodes.enroll(svc, ADMIN, nodes.Enrollment(
        name=name, zone=zone, redfish_url=url, system=system, arch=arch, vcpus=vcpus,
        ram_mib=ram_mib, disk_gib=disk_gib, username=USER, password=PASSWORD))
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).where(BaremetalNodeRow.name == name)
                  .values(state="available"))


def _create(svc: Services, name: str, type_name: str = "bm1.tiny", /, **opts: object
            ) -> InstanceView:
    return instances.create(svc, ADMIN, None, instances.CreateInstance(
        name=name, image="tiny", type=type_name, **opts))  # type: ignore[arg-type]


def test_bm1_types_are_in_the_catalogue_marked_bare_metal_with_dearer_prices(
        svc: Services) -> None:
    types = {t.name: t for t in catalogue.list_types(svc)}
    assert types["bm1.tiny"].baremetal and not types["t1.nano"].baremetal
    price = {t.name: t.price_per_hour for t in svc.settings.instance_types}
    # Dearer than a VM of the same size (t1.micro: 1 vCPU, 256 MiB too).
    assert price["bm1.tiny"] > 5 * price["t1.micro"]  # type: ignore[operator]


def test_a_create_takes_the_smallest_fitting_node_and_marks_it_deploying(
        keyed: Services) -> None:
    _node(keyed, "bm-big", system="big", vcpus=64, ram_mib=262144, disk_gib=1800)
    _node(keyed, "bm-arm", system="arm", arch="arm64")
    _node(keyed, "bm-other-zone", system="oz", zone="local-1b")
    _node(keyed, "bm-1")
    inst = _create(keyed, "metal")
    assert (inst.state, inst.type, inst.host, inst.private_ip) == (
        "pending", "bm1.tiny", None, None)
    shown = {n.name: (n.state, n.instance) for n in nodes.list_nodes(keyed, ADMIN)}
    assert shown == {"bm-1": ("deploying", "metal"), "bm-big": ("available", None),
                     "bm-arm": ("available", None), "bm-other-zone": ("available", None)}
    with keyed.db.session() as s:  # no hypervisor host: no agent ever sees it
        assert s.scalar(select(InstanceRow.host_id).where(InstanceRow.name == "metal")) is None
    # The next one gets the big node (the only one left that fits), then none is left.
    _create(keyed, "metal-2")
    with pytest.raises(InsufficientCapacity) as e:
        _create(keyed, "metal-3")
    assert e.value.code == "no_node_fits"
    assert str(e.value) == (
        "no bare-metal node in zone local-1a fits bm1.tiny (1 vCPUs, 256 MiB, 1 GiB disk, "
        "x86_64): 3 nodes: 2 deploying, 1 arm64")
    _node(keyed, "bm-small", system="small")
    with pytest.raises(InsufficientCapacity, match="4 nodes: 2 deploying, 1 arm64, 1 too small"):
        _create(keyed, "metal-4", "bm1.medium")
    # A node that holds an instance is not deleted under it.
    with pytest.raises(Conflict) as c:
        nodes.delete(keyed, ADMIN, "bm-1")
    assert c.value.code == "node_in_use"


def test_an_image_with_no_whole_disk_form_is_refused_at_create_and_takes_no_node(
        keyed: Services) -> None:
    _node(keyed, "bm-arm", system="arm", arch="arm64")
    before = nodes.list_nodes(keyed, ADMIN)
    with pytest.raises(InvalidInput) as e:  # the tiny image's arm64 variant: no such form
        _create(keyed, "metal", arch="arm64")
    assert e.value.code == "no_whole_disk_image"
    assert str(e.value) == ("image 'tiny' (arm64) has no whole-disk form for bare metal: only "
                            "x86_64 images deploy so far")
    assert nodes.list_nodes(keyed, ADMIN) == before
    assert instances.list_all(keyed, ADMIN, None) == []


def test_racing_creates_never_take_one_node_twice(keyed: Services) -> None:
    _node(keyed, "bm-1")
    _node(keyed, "bm-2", system="n2")

    def create(i: int) -> str:
        try:
            _create(keyed, f"m{i}")
        except InsufficientCapacity as e:
            return e.code
        return "created"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(create, range(6)))
    assert sorted(outcomes) == ["created"] * 2 + ["no_node_fits"] * 4, outcomes
    held = [n.instance for n in nodes.list_nodes(keyed, ADMIN)]
    assert None not in held and len(set(held)) == 2


@pytest.mark.parametrize(("opts", "flag"), [
    ({"dedicated_host": "dh-1"}, "--dedicated-host"),
    ({"tenancy": "dedicated"}, "--tenancy"),
    ({"placement_group": "pg"}, "--placement-group"),
    ({"disk_gib": 5}, "--disk-size"),
])
def test_vm_only_create_options_are_refused_and_take_no_node(
        keyed: Services, opts: dict[str, object], flag: str) -> None:
    _node(keyed, "bm-1")
    with pytest.raises(InvalidInput, match=flag) as e:
        _create(keyed, "metal", **opts)
    assert e.value.code == "not_for_baremetal"
    assert [n.state for n in nodes.list_nodes(keyed, ADMIN)] == ["available"]
    assert instances.list_all(keyed, ADMIN, None) == []


def test_volumes_and_resize_of_a_bm1_instance_are_refused_and_power_before_its_deploy(
        keyed: Services) -> None:
    _node(keyed, "bm-1")
    _create(keyed, "metal")
    volumes.create(keyed, ADMIN, None, "v1", 1)
    refusals: list[CumuloError] = []
    for call in (lambda: volumes.attach(keyed, ADMIN, None, "v1", "metal"),
                 lambda: instances.resize(keyed, ADMIN, None, "metal", "t1.nano")):
        with pytest.raises(CumuloError) as e:
            call()
        refusals.append(e.value)
    assert {r.code for r in refusals} == {"not_for_baremetal"}
    assert "a volume is for VMs only" in str(refusals[0])
    # Power actions are the conductor's (test_baremetal_power.py), once the node is deployed.
    with pytest.raises(Conflict, match="server is deploying, not deployed") as c:
        instances.act(keyed, ADMIN, None, "metal", Action.STOP)
    assert c.value.code == "invalid_state"
    assert instances.get(keyed, ADMIN, None, "metal").state == "pending"


def test_deleting_a_bm1_instance_forgets_it_and_never_leaves_its_node_available_unwiped(
        keyed: Services, tmp_path: Path) -> None:
    with bmc_in_thread(tmp_path / "bmc", MachineSpec("n1", 1, 256, 2)) as bmc:
        _node(keyed, "bm-1", url=bmc.url)
        _create(keyed, "metal")
        bmc.machines["n1"].power_on()
        # deleted before the conductor deploys it (the deploy: test_baremetal_deploy.py)
        gone = instances.act(keyed, ADMIN, None, "metal", Action.DELETE)
        assert gone.state == "deleting"
        assert nodes.show(keyed, ADMIN, "bm-1").state == "cleaning"
        # This API has no deploy URLs, so the disk cannot be wiped: the machine is powered
        # off and the node is in error, not available (the wipe: test_baremetal_clean.py).
        assert conductor.run_pass(keyed) == {"bm-1": "error"}
        assert bmc.machines["n1"].pid() is None
    node = nodes.show(keyed, ADMIN, "bm-1")
    assert (node.state, node.instance, node.power_state) == ("error", None, "off")
    assert (node.last_error or "").startswith("cleaning: this API has no deploy URLs")
    assert instances.list_all(keyed, ADMIN, None) == []
    with keyed.db.session() as s:
        kinds = list(s.scalars(select(EventRow.kind).where(EventRow.resource_name == "metal")
                               .order_by(EventRow.id)))
    assert kinds == ["created", "delete_requested", "deleted"]


def test_a_bmc_that_fails_while_cleaning_sends_the_node_to_error_and_a_retry_cleans_it(
        keyed: Services, tmp_path: Path) -> None:
    _node(keyed, "bm-1")  # its BMC (port 9) does not answer
    _create(keyed, "metal")
    instances.act(keyed, ADMIN, None, "metal", Action.DELETE)
    assert conductor.run_pass(keyed) == {"bm-1": "error"}
    node = nodes.show(keyed, ADMIN, "bm-1")
    assert node.instance is None
    assert node.last_error is not None and node.last_error.startswith("cleaning: ")
    assert instances.list_all(keyed, ADMIN, None) == []  # the instance goes all the same
    with bmc_in_thread(tmp_path / "bmc", MachineSpec("n1", 1, 256, 2)) as bmc:
        machine = bmc.machines["n1"]
        # The BMC answers again (here: at another address), and the machine still runs the
        # last tenant's system: the retry cleans it again, rather than just inspecting it.
        with keyed.db.session() as s:
            s.execute(update(BaremetalNodeRow).values(redfish_url=bmc.url))
        machine.power_on()
        assert machine.pid() is not None
        retried = nodes.retry(keyed, ADMIN, "bm-1")
        assert (retried.state, retried.last_error) == ("cleaning", None)
        # (no deploy URLs here: the wipe cannot run, the node stays in error, powered off)
        assert conductor.run_pass(keyed) == {"bm-1": "error"}
        assert machine.pid() is None
