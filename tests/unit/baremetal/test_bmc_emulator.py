"""The Redfish BMC emulator's conversation, as a client sees it over HTTP (no machine is
powered on here: tests/integration/test_baremetal_qemu.py does that)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cumulo.baremetal import redfish, switch_port
from cumulo.baremetal.bmc_emulator import Emulator, parse_node, serve
from cumulo.baremetal.emulated_machine import EmulatedMachine, MachineSpec
from tests.baremetal_support import PASSWORD, USER, Bmc, bmc_in_thread

SYS = "/redfish/v1/Systems/n1"


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[Bmc]:
    with bmc_in_thread(tmp_path, MachineSpec("n1", 2, 1024, 4)) as b:
        yield b


@pytest.fixture
def http(bmc: Bmc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bmc.url, auth=(USER, PASSWORD), timeout=30) as c:
        yield c


def test_the_service_root_is_open_and_the_rest_needs_the_password(bmc: Bmc) -> None:
    root = httpx.get(f"{bmc.url}/redfish/v1/", timeout=30)
    assert root.status_code == 200 and root.json()["Systems"] == {
        "@odata.id": "/redfish/v1/Systems"}
    for auth in [None, (USER, "wrong"), ("root", PASSWORD)]:
        r = httpx.get(f"{bmc.url}{SYS}", auth=auth, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")


def test_a_system_reports_its_machine(http: httpx.Client) -> None:
    assert [m["@odata.id"] for m in http.get("/redfish/v1/Systems").json()["Members"]] == [SYS]
    system = http.get(SYS).json()
    assert (system["PowerState"], system["ProcessorSummary"]["Count"],
            system["MemorySummary"]["TotalSystemMemoryGiB"]) == ("Off", 2, 1.0)
    storage = http.get(f"{SYS}/SimpleStorage/1").json()
    assert storage["Devices"][0]["CapacityBytes"] == 4 * 1024**3
    assert http.get(f"{SYS}/Processors/CPU0").json()["InstructionSet"] == "x86-64"
    nics = http.get(f"{SYS}/EthernetInterfaces").json()["Members"]
    nic = http.get(nics[0]["@odata.id"]).json()
    assert nic["MACAddress"] == switch_port.mac_of("n1")


def test_inspection_reads_the_nics_mac_over_redfish(bmc: Bmc) -> None:
    """What the agent's DHCP answers the deployed server by (sushy, as the conductor reads)."""
    facts = redfish.Bmc(redfish.BmcAddress(bmc.url, SYS, USER, PASSWORD)).facts()
    assert facts.mac == bmc.machines["n1"].mac == switch_port.mac_of("n1")


def test_the_boot_override_is_kept_and_bad_values_refused(http: httpx.Client,
                                                          bmc: Bmc) -> None:
    r = http.patch(SYS, json={"Boot": {"BootSourceOverrideTarget": "Cd",
                                       "BootSourceOverrideEnabled": "Once"}})
    assert r.status_code == 204
    assert http.get(SYS).json()["Boot"]["BootSourceOverrideTarget"] == "Cd"
    assert "order=d" in bmc.machines["n1"].argv()
    # Kept across an emulator restart (state.json beside the disk).
    again = EmulatedMachine(bmc.machines["n1"].spec, bmc.machines["n1"].dir.parent)
    assert (again.state.boot_target, again.state.boot_enabled) == ("Cd", "Once")
    for bad in [{"Boot": {"BootSourceOverrideTarget": "Floppy"}}, {"PowerState": "On"}]:
        r = http.patch(SYS, json=bad)
        assert r.status_code == 400 and "error" in r.json()
    assert http.get(SYS).json()["Boot"]["BootSourceOverrideTarget"] == "Cd"


def test_unknown_resets_resources_and_media_urls_are_refused(http: httpx.Client) -> None:
    r = http.post(f"{SYS}/Actions/ComputerSystem.Reset", json={"ResetType": "Nmi"})
    assert r.status_code == 400 and "Nmi" in r.json()["error"]["message"]
    assert http.get("/redfish/v1/Systems/n2").status_code == 404
    media = "/redfish/v1/Managers/n1/VirtualMedia/Cd"
    r = http.post(f"{media}/Actions/VirtualMedia.InsertMedia", json={"Image": "file:///etc/shadow"})
    assert r.status_code == 400
    assert http.get(media).json()["Inserted"] is False
    assert http.post(SYS, content=b"not json").status_code in (400, 404)


def test_the_emulator_listens_on_loopback_only(tmp_path: Path) -> None:
    emu = Emulator([], USER, PASSWORD)
    with pytest.raises(ValueError, match="loopback only"):
        serve(emu, "0.0.0.0", 0)
    with pytest.raises(ValueError):
        parse_node("n1:2:1024")  # no disk size
    assert parse_node("n-1:2:1024:4") == MachineSpec("n-1", 2, 1024, 4)


def test_a_provisioning_nic_reaches_only_the_api_port(tmp_path: Path) -> None:
    spec = MachineSpec("p1", 1, 128, 1)
    assert "-netdev" not in EmulatedMachine(spec, tmp_path / "a").argv()  # none unless asked
    m = EmulatedMachine(spec, tmp_path / "b", provision_port=41234)
    m.set_boot("Cd", "Once")
    argv = m.argv()
    netdev = argv[argv.index("-netdev") + 1]
    # restrict=on: no NAT out, no host services; the one guestfwd goes to the loopback port
    assert netdev == ("user,id=nic,restrict=on,"
                      "guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 41234")
    assert "hostfwd" not in " ".join(argv)
    assert f"virtio-net-pci,netdev=nic,mac={m.mac}" in argv


def test_the_nic_is_on_its_switch_port_when_the_machine_boots_its_disk(tmp_path: Path) -> None:
    """The network flip: the deploy media boots on the provisioning network, the disk on the
    switch port (the tap's fd), with one MAC (the one Redfish reports) on both sides."""
    m = EmulatedMachine(MachineSpec("p2", 1, 128, 1), tmp_path, provision_port=41234,
                        port_netns="cn-test")
    assert not m.boots_media()
    argv = m.argv(tap_fd=7)
    assert argv[argv.index("-netdev") + 1] == "tap,id=nic,fd=7"
    assert f"virtio-net-pci,netdev=nic,mac={m.mac},romfile=" in argv
    assert "guestfwd" not in " ".join(argv)
    m.set_boot("Cd", "Once")
    assert "tap," not in " ".join(m.argv(tap_fd=7))  # the media never sees the tenant side
    assert m.mac == switch_port.mac_of("p2") and m.mac.startswith("02:")
