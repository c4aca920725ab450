"""The Redfish documents of the BMC emulator: the shapes sushy (and Ironic) read.

Modelled on the DMTF schemas (ServiceRoot, ComputerSystem, Processor, SimpleStorage, Manager,
VirtualMedia) and on what sushy-tools serves, written for cumulo's emulated machines.
"""

from __future__ import annotations

import uuid
from typing import Any

from cumulo.baremetal.emulated_machine import BOOT_TARGETS, EmulatedMachine

V1 = "/redfish/v1"
RESET_TYPES = ["On", "ForceOn", "ForceOff", "GracefulShutdown", "ForceRestart",
               "GracefulRestart"]
MEDIA_ID = "Cd"
NIC_ID = "NIC1"


def ref(path: str) -> dict[str, str]:
    return {"@odata.id": path}


def root(uuid: str) -> dict[str, Any]:
    return {"@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot", "@odata.id": f"{V1}/",
            "Id": "CumuloBmcEmulator", "Name": "cumulo BMC emulator", "RedfishVersion": "1.5.0",
            "UUID": uuid, "Systems": ref(f"{V1}/Systems"), "Managers": ref(f"{V1}/Managers")}


def collection(path: str, kind: str, members: list[str]) -> dict[str, Any]:
    return {"@odata.type": f"#{kind}.{kind}", "@odata.id": path, "Name": kind,
            "Members@odata.count": len(members), "Members": [ref(m) for m in members]}


def system(m: EmulatedMachine) -> dict[str, Any]:
    sid = m.spec.system_id
    path = f"{V1}/Systems/{sid}"
    return {
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem", "@odata.id": path,
        "Id": sid, "Name": sid, "UUID": _uuid_of(sid), "Manufacturer": "cumulo emulator",
        "SystemType": "Physical",
        "Status": {"State": "Enabled", "Health": "OK"},
        "PowerState": m.power_state(),
        "Boot": {"BootSourceOverrideEnabled": m.state.boot_enabled,
                 "BootSourceOverrideTarget": m.state.boot_target,
                 "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
                 "BootSourceOverrideMode": "Legacy"},
        "ProcessorSummary": {"Count": m.spec.vcpus, "Status": {"State": "Enabled"}},
        # GiB may be fractional (DMTF: a number): a 512 MiB machine has 0.5.
        "MemorySummary": {"TotalSystemMemoryGiB": m.spec.ram_mib / 1024,
                          "Status": {"State": "Enabled"}},
        "Processors": ref(f"{path}/Processors"),
        "SimpleStorage": ref(f"{path}/SimpleStorage"),
        "EthernetInterfaces": ref(f"{path}/EthernetInterfaces"),
        "VirtualMedia": ref(f"{path}/VirtualMedia"),
        "Links": {"ManagedBy": [ref(f"{V1}/Managers/{sid}")]},
        "Actions": {"#ComputerSystem.Reset": {
            "target": f"{path}/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": RESET_TYPES}},
    }


def processor(m: EmulatedMachine) -> dict[str, Any]:
    path = f"{V1}/Systems/{m.spec.system_id}/Processors/CPU0"
    return {"@odata.type": "#Processor.v1_0_0.Processor", "@odata.id": path, "Id": "CPU0",
            "Name": "CPU0", "ProcessorType": "CPU", "ProcessorArchitecture": "x86",
            "InstructionSet": "x86-64", "Model": "QEMU TCG", "TotalCores": m.spec.vcpus,
            "TotalThreads": m.spec.vcpus, "Status": {"State": "Enabled", "Health": "OK"}}


def simple_storage(m: EmulatedMachine) -> dict[str, Any]:
    path = f"{V1}/Systems/{m.spec.system_id}/SimpleStorage/1"
    return {"@odata.type": "#SimpleStorage.v1_2_0.SimpleStorage", "@odata.id": path, "Id": "1",
            "Name": "virtio disk controller",
            "Devices": [{"Name": "disk0", "CapacityBytes": m.spec.disk_gib * 1024**3,
                         "Status": {"State": "Enabled", "Health": "OK"}}]}


def ethernet_interface(m: EmulatedMachine) -> dict[str, Any]:
    """The machine's one NIC (inspection reads its MAC: the agent's DHCP answers it)."""
    path = f"{V1}/Systems/{m.spec.system_id}/EthernetInterfaces/{NIC_ID}"
    return {"@odata.type": "#EthernetInterface.v1_4_0.EthernetInterface", "@odata.id": path,
            "Id": NIC_ID, "Name": "virtio NIC", "MACAddress": m.mac,
            "PermanentMACAddress": m.mac, "LinkStatus": "LinkUp",
            "Status": {"State": "Enabled", "Health": "OK"}}


def manager(m: EmulatedMachine) -> dict[str, Any]:
    sid = m.spec.system_id
    path = f"{V1}/Managers/{sid}"
    return {"@odata.type": "#Manager.v1_5_0.Manager", "@odata.id": path, "Id": sid,
            "Name": f"BMC of {sid}", "ManagerType": "BMC",
            "VirtualMedia": ref(f"{path}/VirtualMedia"),
            "Links": {"ManagerForServers": [ref(f"{V1}/Systems/{sid}")]}}


def virtual_media(m: EmulatedMachine, base: str) -> dict[str, Any]:
    """The one CD drive; `base` is the Manager's or the System's path (both serve it)."""
    path = f"{base}/VirtualMedia/{MEDIA_ID}"
    inserted = bool(m.state.media_image)
    return {"@odata.type": "#VirtualMedia.v1_4_0.VirtualMedia", "@odata.id": path,
            "Id": MEDIA_ID, "Name": "Virtual CD", "MediaTypes": ["CD", "DVD"],
            "Image": m.state.media_image or None, "Inserted": inserted,
            "WriteProtected": True, "ConnectedVia": "URI" if inserted else "NotConnected",
            "Actions": {
                "#VirtualMedia.InsertMedia": {
                    "target": f"{path}/Actions/VirtualMedia.InsertMedia"},
                "#VirtualMedia.EjectMedia": {
                    "target": f"{path}/Actions/VirtualMedia.EjectMedia"}}}


def error(message: str, code: str = "Base.1.0.GeneralError") -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "@Message.ExtendedInfo": [{"MessageId": code, "Message": message}]}}


def _uuid_of(system_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cumulo-bm:{system_id}"))
