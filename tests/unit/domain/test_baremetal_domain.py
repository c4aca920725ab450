"""Bare-metal nodes, the pure part: what an operator may enroll, and what an inspection's
facts make of a node."""

from __future__ import annotations

import pytest

from cumulo.domain import baremetal as bm
from cumulo.domain.arch import Arch
from cumulo.domain.errors import InvalidInput


@pytest.mark.parametrize(("given", "stored"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("https://bmc-12.rack3.example.net/", "https://bmc-12.rack3.example.net"),
    ("http://[::1]:623", "http://[::1]:623"),
    ("https://10.0.0.5", "https://10.0.0.5"),
])
def test_redfish_urls_accepted(given: str, stored: str) -> None:
    assert bm.redfish_url(given) == stored


@pytest.mark.parametrize("url", [
    "", "ftp://bmc", "bmc:443", "http://", "http://user:pw@bmc", "http://bmc/redfish/v1",
    "http://bmc?x=1", "http://bmc#frag", "http://bmc:99999", "http://bmc:port",
    "http://bm c", "http://bmc\n", "http://-bad-.example", "http://" + "a" * 300,
    "file:///etc/passwd", "http://bmc_1",
])
def test_redfish_urls_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as e:
        bm.redfish_url(url)
    assert e.value.code == "invalid_redfish_url"
    assert "\n" not in e.value.message


@pytest.mark.parametrize(("given", "path"), [
    ("1", "/redfish/v1/Systems/1"),
    ("System.Embedded.1", "/redfish/v1/Systems/System.Embedded.1"),
    ("/redfish/v1/Systems/node-3", "/redfish/v1/Systems/node-3"),
])
def test_system_ids_accepted(given: str, path: str) -> None:
    assert bm.system_path(given) == path


@pytest.mark.parametrize("system", ["", ".", "..", "a/b", "../Managers/1", "/redfish/v1/Systems/",
                                    "/redfish/v1/Systems/a/b", "a b", "a?b", "x" * 129])
def test_system_ids_refused(system: str) -> None:
    with pytest.raises(InvalidInput) as e:
        bm.system_path(system)
    assert e.value.code == "invalid_redfish_system"


def test_bmc_credentials_are_checked() -> None:
    assert bm.bmc_username("root") == "root"
    assert bm.bmc_password("calvin with spaces") == "calvin with spaces"
    for bad in ("", "a:b", "a b", "x" * 65, "é"):
        with pytest.raises(InvalidInput):
            bm.bmc_username(bad)
    for bad in ("", "pw\n", "pw\x00", "x" * 257, "é"):
        with pytest.raises(InvalidInput) as e:
            bm.bmc_password(bad)
        assert bad not in e.value.message or bad == ""  # a password is never echoed


ENROLLED = bm.Enrolled(Arch.X86_64, vcpus=2, ram_mib=1024, disk_gib=4)


def _facts(**kw: object) -> bm.Facts:
    base: dict[str, object] = {"arch": "x86_64", "vcpus": 2, "ram_mib": 1024, "disk_gib": 4,
                               "power_state": "off"}
    base.update(kw)
    return bm.Facts(**base)  # type: ignore[arg-type]


def test_matching_facts_make_a_node_available() -> None:
    assert bm.after_inspection(ENROLLED, _facts()) == (bm.NodeState.AVAILABLE, None)
    # A larger disk than enrolled is fine (the operator offers less); unknown facts are
    # taken on the operator's word.
    assert bm.after_inspection(ENROLLED, _facts(disk_gib=100))[0] is bm.NodeState.AVAILABLE
    unknown = _facts(arch=None, vcpus=None, ram_mib=None, disk_gib=None)
    assert bm.after_inspection(ENROLLED, unknown)[0] is bm.NodeState.AVAILABLE


def test_facts_that_differ_send_a_node_to_error_saying_which() -> None:
    state, error = bm.after_inspection(
        ENROLLED, _facts(arch="arm64", vcpus=4, ram_mib=512, disk_gib=2))
    assert state is bm.NodeState.ERROR
    assert error == ("inspection: the BMC reports arch arm64 (enrolled x86_64), vcpus 4 "
                     "(enrolled 2), ram 512 MiB (enrolled 1024), disk 2 GiB (enrolled 4)")


def test_redfish_processor_names_map_to_cumulo_arches() -> None:
    assert bm.redfish_arch("x86", "x86-64") == "x86_64"
    assert bm.redfish_arch("x86", None) == "x86_64"
    assert bm.redfish_arch("ARM", "ARM-A64") == "arm64"
    assert bm.redfish_arch(None, None) is None
    assert bm.redfish_arch("MIPS", "MIPS64") == "MIPS/MIPS64"  # never taken for one of ours


def test_the_conductor_works_only_on_nodes_in_its_states() -> None:
    assert set(bm.CONDUCTOR_STATES) == {bm.NodeState.ENROLL, bm.NodeState.MANAGEABLE,
                                        bm.NodeState.INSPECTING, bm.NodeState.DEPLOYING,
                                        bm.NodeState.DELETING, bm.NodeState.CLEANING}
    assert not set(bm.CONDUCTOR_STATES) & {bm.NodeState.AVAILABLE, bm.NodeState.ERROR}
    assert bm.NodeState.ACTIVE in bm.UNDELETABLE
