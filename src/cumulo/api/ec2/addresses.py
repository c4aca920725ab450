"""AllocateAddress, AssociateAddress, DisassociateAddress, ReleaseAddress, DescribeAddresses.

An Elastic IP is a public IP allocated on its own; the public IP every instance gets at
launch (and loses at termination) is not one, as in EC2.
"""

from __future__ import annotations

from typing import Any

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import Ec2Error
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.services import instances, public_ips
from cumulo.services.views import PublicIpView

FILTERS = frozenset({"allocation-id", "association-id", "instance-id", "public-ip",
                     "domain"})


def _association(ip: PublicIpView) -> str:
    return "eipassoc-" + ip.id.partition("-")[2]


def _elastic(call: Call) -> list[PublicIpView]:
    return [ip for ip in public_ips.list_all(call.svc, call.who, None) if not ip.auto]


def _find(call: Call) -> PublicIpView:
    """The address named by AllocationId, PublicIp or AssociationId."""
    p = call.params
    every = _elastic(call)
    alloc, public, assoc = p.text("AllocationId"), p.text("PublicIp"), p.text("AssociationId")
    if alloc is not None:
        ids.from_ec2(alloc, "eipalloc")
        found = [ip for ip in every if ids.to_ec2(ip.id) == alloc]
        if not found:
            raise Ec2Error("InvalidAllocationID.NotFound", f"The allocation ID '{alloc}' does "
                           "not exist")
    elif public is not None:
        found = [ip for ip in every if ip.ip == public]
        if not found:
            raise Ec2Error("InvalidAddress.NotFound", f"Address '{public}' not found.")
    elif assoc is not None:
        found = [ip for ip in every if ip.instance and _association(ip) == assoc]
        if not found:
            raise Ec2Error("InvalidAssociationID.NotFound", f"The association ID '{assoc}' "
                           "does not exist")
    else:
        raise Ec2Error("MissingParameter", "The request must contain AllocationId or PublicIp")
    return found[0]


def _item(ip: PublicIpView, instance_ids: dict[str, str]) -> dict[str, Any]:
    attached = instance_ids.get(ip.instance or "") if ip.instance else None
    return {"publicIp": ip.ip, "allocationId": ids.to_ec2(ip.id), "domain": "vpc",
            "instanceId": attached, "associationId": _association(ip) if attached else None,
            "networkBorderGroup": "", "tagSet": []}


@action("AllocateAddress")
def allocate_address(call: Call) -> Body:
    ip = public_ips.allocate(call.svc, call.who, None)
    return {"publicIp": ip.ip, "allocationId": ids.to_ec2(ip.id), "domain": "vpc"}


@action("AssociateAddress")
def associate_address(call: Call) -> Body:
    ip = _find(call)
    instance_id = call.params.req("InstanceId")
    ids.from_ec2(instance_id, "i")
    done = public_ips.attach(call.svc, call.who, None, ip.ip, instance_id)
    return {"return": True, "associationId": _association(done)}


@action("DisassociateAddress")
def disassociate_address(call: Call) -> Body:
    public_ips.detach(call.svc, call.who, None, _find(call).ip)
    return {"return": True}


@action("ReleaseAddress")
def release_address(call: Call) -> Body:
    public_ips.release(call.svc, call.who, None, _find(call).ip)
    return {"return": True}


@action("DescribeAddresses")
def describe_addresses(call: Call) -> Body:
    names = {i.name: i.id for i in instances.list_all(call.svc, call.who, None)}
    every = [(ip, _item(ip, names)) for ip in _elastic(call)]
    wanted_alloc = call.params.items("AllocationId")
    wanted_ips = call.params.items("PublicIp")
    known = {b["allocationId"] for _, b in every} | {b["publicIp"] for _, b in every}
    missing = [w for w in wanted_alloc + wanted_ips if w not in known]
    if missing:
        raise Ec2Error("InvalidAllocationID.NotFound" if wanted_alloc else
                       "InvalidAddress.NotFound", f"Address '{missing[0]}' not found.")
    wanted = filters.parse(call.params, FILTERS)
    chosen = [b for _, b in every
              if (not wanted_alloc or b["allocationId"] in wanted_alloc)
              and (not wanted_ips or b["publicIp"] in wanted_ips)
              and filters.matches(wanted, {"allocation-id": b["allocationId"],
                                           "association-id": b["associationId"],
                                           "instance-id": b["instanceId"],
                                           "public-ip": b["publicIp"], "domain": "vpc"}, {})]
    return {"addressesSet": chosen}
