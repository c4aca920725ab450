"""DescribeVpcs, DescribeSubnets: a project's networks as one VPC (the project) and a subnet
per network (each network lives in one zone)."""

from __future__ import annotations

import ipaddress

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import Ec2Error
from cumulo.api.ec2.instance_view import vpc_id
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.services import networks

# isDefault: EC2 takes that spelling too (Ansible's amazon.aws uses it).
VPC_FILTERS = frozenset({"vpc-id", "is-default", "isDefault", "state", "cidr", "owner-id"})
SUBNET_FILTERS = frozenset({"subnet-id", "vpc-id", "availability-zone", "cidr-block",
                            "default-for-az", "state"})


@action("DescribeVpcs")
def describe_vpcs(call: Call) -> Body:
    vpc = vpc_id(call)
    pool = call.svc.settings.network.private_pool
    wanted = call.params.items("VpcId")
    for w in wanted:
        ids.from_ec2(w, "vpc")
        if w != vpc:
            raise Ec2Error("InvalidVpcID.NotFound", f"The vpc ID '{w}' does not exist")
    fact = {"vpc-id": vpc, "is-default": True, "isDefault": True, "state": "available",
            "cidr": pool,
            "owner-id": call.owner_id}
    chosen = filters.matches(filters.parse(call.params, VPC_FILTERS), fact, {})
    return {"vpcSet": [{"vpcId": vpc, "state": "available", "cidrBlock": pool,
                        "ownerId": call.owner_id, "instanceTenancy": "default",
                        "isDefault": True, "dhcpOptionsId": "default",
                        "cidrBlockAssociationSet": [{"cidrBlock": pool,
                                                     "cidrBlockState": {"state": "associated"}}],
                        "tagSet": []}] if chosen else []}


@action("DescribeSubnets")
def describe_subnets(call: Call) -> Body:
    vpc = vpc_id(call)
    region = next(r for r in call.svc.settings.regions if r.name == call.region)
    networks.ensure_defaults(call.svc, call.who, None, list(region.zones))
    nets = networks.list_all(call.svc, call.who, None)
    wanted = call.params.items("SubnetId")
    ids.require_known(wanted, {ids.to_ec2(n.id) for n in nets}, "subnet")
    wanted_filters = filters.parse(call.params, SUBNET_FILTERS)
    out = []
    for n in nets:
        sid = ids.to_ec2(n.id)
        fact = {"subnet-id": sid, "vpc-id": vpc, "availability-zone": n.zone,
                "cidr-block": n.cidr, "default-for-az": n.is_default, "state": "available"}
        if (wanted and sid not in wanted) or not filters.matches(wanted_filters, fact, {}):
            continue
        size = ipaddress.ip_network(n.cidr).num_addresses - 3  # network, gateway, broadcast
        out.append({"subnetId": sid, "vpcId": vpc, "state": "available", "cidrBlock": n.cidr,
                    "availabilityZone": n.zone, "availabilityZoneId": n.zone,
                    "availableIpAddressCount": max(0, size - n.instances),
                    "defaultForAz": n.is_default, "mapPublicIpOnLaunch": True,
                    "ownerId": call.owner_id, "tagSet": [{"key": "Name", "value": n.name}]})
    return {"subnetSet": out}
