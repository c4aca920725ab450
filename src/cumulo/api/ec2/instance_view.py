"""An instance as EC2 shows it: its item in `instancesSet`, its state, its filter facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cumulo.api.ec2 import ids
from cumulo.api.ec2.filters import tag_set
from cumulo.api.ec2.registry import Call
from cumulo.services import (
    device_names,
    instances,
    networks,
    security_groups,
    terminated,
    volumes,
)
from cumulo.services.views import InstanceView, NetworkView

# cumulo's states as EC2's (code, name). A rebooting instance is running for EC2, as is a
# paused one (its status checks say impaired); an instance in error is stopped (its
# stateReason says why).
_STATES: dict[str, tuple[int, str]] = {
    "pending": (0, "pending"),
    "starting": (0, "pending"),
    "running": (16, "running"),
    "rebooting": (16, "running"),
    "paused": (16, "running"),
    "deleting": (32, "shutting-down"),
    "stopping": (64, "stopping"),
    "stopped": (80, "stopped"),
    "error": (80, "stopped"),
}
TERMINATED = (48, "terminated")
FILTERS = frozenset({
    "instance-id", "instance-state-name", "instance-state-code", "availability-zone",
    "instance-type", "image-id", "ip-address", "private-ip-address", "key-name", "vpc-id",
    "subnet-id", "architecture", "private-dns-name", "group-id", "group-name",
    "reservation-id", "dns-name",
})


@dataclass(frozen=True)
class Seen:
    """An instance as EC2 sees it: live, or terminated (gone from cumulo since `gone_at`)."""

    view: InstanceView
    gone_at: datetime | None = None

    @property
    def state(self) -> tuple[int, str]:
        return TERMINATED if self.gone_at else _STATES.get(self.view.state, (0, "pending"))


@dataclass(frozen=True)
class Context:
    """What the items of one answer refer to: the project's groups and networks."""

    group_ids: dict[str, str]  # name -> id
    subnets: dict[tuple[str, str], NetworkView]  # (zone, name) -> network
    vpc_id: str
    disks: dict[str, list[dict[str, Any]]]  # instance name -> its volumes' mappings


def context(call: Call) -> Context:
    groups = security_groups.list_all(call.svc, call.who, None)
    nets = networks.list_all(call.svc, call.who, None)
    names = device_names.of(call.svc, call.who, None)
    disks: dict[str, list[dict[str, Any]]] = {}
    for v in volumes.list_all(call.svc, call.who, None):
        # `error` while attached: its storage host is down, the attachment holds (EC2 has
        # no error status for an attachment; DescribeVolumes shows the volume's).
        if v.attached_to and v.state in ("attaching", "in-use", "detaching", "error"):
            disks.setdefault(v.attached_to, []).append({
                "deviceName": names.get(v.id) or f"/dev/{v.device}",
                "ebs": {"volumeId": v.id, "status": "attached" if v.state in ("in-use", "error")
                        else v.state, "attachTime": v.created_at,
                        "deleteOnTermination": v.delete_on_termination}})
    return Context(group_ids={g.name: g.id for g in groups},
                   subnets={(n.zone, n.name): n for n in nets},
                   vpc_id=vpc_id(call), disks=disks)


def vpc_id(call: Call) -> str:
    assert call.who.project_id is not None
    return ids.to_ec2(call.who.project_id)


def everything(call: Call) -> list[Seen]:
    """The project's instances, live then recently terminated, oldest first."""
    live = [Seen(v) for v in instances.list_all(call.svc, call.who, None)]
    gone = [Seen(v, at) for v, at in terminated.recent(call.svc, call.who, None)]
    return live + gone


def instance_type(v: InstanceView) -> str:
    return v.type or f"custom-{v.vcpus}-{v.ram_mib}"


def state_of(code_name: tuple[int, str]) -> dict[str, Any]:
    return {"code": code_name[0], "name": code_name[1]}


def item(seen: Seen, ctx: Context) -> dict[str, Any]:
    v = seen.view
    net = ctx.subnets.get((v.zone, v.network or "")) if not seen.gone_at else None
    subnet = ids.to_ec2(net.id) if net else None
    groups = [{"groupId": ids.to_ec2(ctx.group_ids[g]), "groupName": g}
              for g in v.security_groups if g in ctx.group_ids]
    reason = None
    if seen.gone_at:
        reason = {"code": "Client.UserInitiatedShutdown",
                  "message": "Client.UserInitiatedShutdown: User initiated shutdown"}
    elif v.state == "error":
        reason = {"code": "Server.InternalError", "message": v.state_reason or "error"}
    live = not seen.gone_at
    return {
        "instanceId": v.id,
        "imageId": ids.to_ec2(v.image_id),
        "instanceState": state_of(seen.state),
        "privateDnsName": v.fqdn if live else "",
        "dnsName": "",
        "reason": f"User initiated ({seen.gone_at:%Y-%m-%d %H:%M:%S} GMT)" if seen.gone_at
        else v.state_reason,
        "keyName": v.key_names[0] if v.key_names else None,
        "amiLaunchIndex": 0,
        "productCodes": [],
        "instanceType": instance_type(v),
        "launchTime": v.created_at,
        "placement": {"availabilityZone": v.zone, "groupName": "",
                      "tenancy": "host" if v.tenancy == "dedicated" else "default",
                      **({"hostId": v.dedicated_host} if v.dedicated_host else {})},
        "monitoring": {"state": "disabled"},
        "subnetId": subnet,
        "vpcId": ctx.vpc_id if subnet else None,
        "privateIpAddress": v.private_ip if live else None,
        "ipAddress": v.public_ip if live else None,
        "sourceDestCheck": True,
        "groupSet": groups,
        "stateReason": reason,
        "architecture": v.arch,
        "rootDeviceType": "ebs",
        "rootDeviceName": "/dev/vda",
        "blockDeviceMapping": ctx.disks.get(v.name, []) if live else [],
        "virtualizationType": "hvm",
        "clientToken": "",
        "tagSet": tag_set(v.tags),
        "hypervisor": "xen",
        "networkInterfaceSet": [] if not subnet else [{
            "networkInterfaceId": "eni-" + v.id.partition("-")[2],
            "subnetId": subnet, "vpcId": ctx.vpc_id, "description": "",
            "ownerId": v.project, "status": "in-use", "privateIpAddress": v.private_ip,
            "privateDnsName": v.fqdn, "sourceDestCheck": True, "groupSet": groups,
            "attachment": {"attachmentId": "eni-attach-" + v.id.partition("-")[2],
                           "deviceIndex": 0, "status": "attached", "attachTime": v.created_at,
                           "deleteOnTermination": True},
            "association": {"publicIp": v.public_ip, "ipOwnerId": "amazon"}
            if v.public_ip else None,
            "privateIpAddressesSet": [{"privateIpAddress": v.private_ip, "primary": True,
                                       "privateDnsName": v.fqdn}],
        }],
        "cpuOptions": {"coreCount": v.vcpus, "threadsPerCore": 1},
    }


def facts(seen: Seen, ctx: Context) -> dict[str, object]:
    """The values EC2's DescribeInstances filters match, by filter name."""
    v = seen.view
    code, name = seen.state
    rendered = item(seen, ctx)
    return {
        "instance-id": v.id, "instance-state-name": name, "instance-state-code": code,
        "availability-zone": v.zone, "instance-type": instance_type(v),
        "image-id": rendered["imageId"], "ip-address": rendered["ipAddress"],
        "private-ip-address": rendered["privateIpAddress"], "key-name": v.key_names,
        "vpc-id": rendered["vpcId"], "subnet-id": rendered["subnetId"],
        "architecture": v.arch, "private-dns-name": rendered["privateDnsName"],
        "group-id": [g["groupId"] for g in rendered["groupSet"]],
        "group-name": [g["groupName"] for g in rendered["groupSet"]],
        "reservation-id": ids.reservation(v.id), "dns-name": "",
    }
