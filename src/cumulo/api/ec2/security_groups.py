"""CreateSecurityGroup, DescribeSecurityGroups, DeleteSecurityGroup,
AuthorizeSecurityGroupIngress, RevokeSecurityGroupIngress.

cumulo's rules are ingress only, one protocol, one port (or all ICMP), one CIDR each: an
IpPermission with a port range or other kinds of sources is refused, not approximated.
"""

from __future__ import annotations

from typing import Any

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import Ec2Error, invalid
from cumulo.api.ec2.instance_view import vpc_id
from cumulo.api.ec2.params import Params
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.domain.errors import Conflict
from cumulo.services import security_groups
from cumulo.services.views import SecurityGroupView

FILTERS = frozenset({"group-id", "group-name", "description", "vpc-id", "owner-id"})


def _permissions(g: SecurityGroupView) -> list[dict[str, Any]]:
    out = []
    for r in g.rules:
        low, high = (-1, -1) if r.port is None else (r.port, r.port)
        out.append({"ipProtocol": r.proto, "fromPort": low, "toPort": high, "groups": [],
                    "ipRanges": [{"cidrIp": r.cidr}], "ipv6Ranges": [], "prefixListIds": []})
    return out


def _item(call: Call, g: SecurityGroupView) -> dict[str, Any]:
    return {"ownerId": call.owner_id, "groupId": ids.to_ec2(g.id), "groupName": g.name,
            "groupDescription": g.description, "vpcId": vpc_id(call),
            "ipPermissions": _permissions(g),
            "ipPermissionsEgress": [{"ipProtocol": "-1", "groups": [],
                                     "ipRanges": [{"cidrIp": "0.0.0.0/0"}]}],
            "tagSet": []}


def find(call: Call, params: Params) -> SecurityGroupView:
    """The group named by GroupId or GroupName."""
    groups = security_groups.list_all(call.svc, call.who, None)
    gid, name = params.text("GroupId"), params.text("GroupName")
    if gid is not None:
        ids.from_ec2(gid, "sg")
        found = [g for g in groups if ids.to_ec2(g.id) == gid]
    elif name is not None:
        found = [g for g in groups if g.name == name]
    else:
        raise Ec2Error("MissingParameter", "The request must contain GroupId or GroupName")
    if not found:
        raise Ec2Error("InvalidGroup.NotFound",
                       f"The security group '{gid or name}' does not exist")
    return found[0]


@action("CreateSecurityGroup")
def create_security_group(call: Call) -> Body:
    name = call.params.req("GroupName")
    description = call.params.req("GroupDescription")
    try:
        g = security_groups.create(call.svc, call.who, None, name, description)
    except Conflict as e:
        raise Ec2Error("InvalidGroup.Duplicate", f"The security group '{name}' already exists") \
            from e
    return {"groupId": ids.to_ec2(g.id), "tagSet": []}


@action("DescribeSecurityGroups")
def describe_security_groups(call: Call) -> Body:
    groups = security_groups.list_all(call.svc, call.who, None)
    by_id = {ids.to_ec2(g.id): g for g in groups}
    by_name = {g.name: g for g in groups}
    wanted_ids, wanted_names = call.params.items("GroupId"), call.params.items("GroupName")
    for w in wanted_ids:
        ids.from_ec2(w, "sg")
    missing = [w for w in wanted_ids if w not in by_id] + \
        [n for n in wanted_names if n not in by_name]
    if missing:
        raise Ec2Error("InvalidGroup.NotFound",
                       f"The security group '{missing[0]}' does not exist")
    wanted = filters.parse(call.params, FILTERS)
    chosen = [g for g in groups
              if (not wanted_ids or ids.to_ec2(g.id) in wanted_ids)
              and (not wanted_names or g.name in wanted_names)
              and filters.matches(wanted, {"group-id": ids.to_ec2(g.id), "group-name": g.name,
                                           "description": g.description,
                                           "vpc-id": vpc_id(call),
                                           "owner-id": call.owner_id}, {})]
    page, token = filters.page(chosen, call.params)
    return {"securityGroupInfo": [_item(call, g) for g in page], "nextToken": token}


@action("DeleteSecurityGroup")
def delete_security_group(call: Call) -> Body:
    g = find(call, call.params)
    security_groups.delete(call.svc, call.who, None, g.name)
    return {"return": True, "groupId": ids.to_ec2(g.id)}


def _rules(params: Params) -> list[tuple[str, int | None, str]]:
    """(proto, port, cidr) of each IpPermissions.N (or the flat legacy parameters)."""
    perms = params.structs("IpPermissions") or [params]
    out: list[tuple[str, int | None, str]] = []
    for p in perms:
        proto = (p.text("IpProtocol") or "").lower()
        proto = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
        if proto in ("-1", "all"):
            raise invalid("cumulo's rules name one protocol (tcp, udp or icmp)")
        low, high = p.integer("FromPort", low=-1, high=65535), \
            p.integer("ToPort", low=-1, high=65535)
        if proto == "icmp":
            port = None
        elif low is None or low != high:
            raise invalid("cumulo's rules open one port: FromPort must equal ToPort")
        else:
            port = low
        cidrs = [r.req("CidrIp") for r in p.structs("IpRanges")] or \
            ([p.req("CidrIp")] if p.text("CidrIp") else [])
        if p.structs("Groups") or p.structs("Ipv6Ranges") or p.structs("PrefixListIds"):
            raise invalid("cumulo's rules have IPv4 CIDR sources only")
        if not cidrs:
            raise Ec2Error("MissingParameter", "an IpPermission needs IpRanges.N.CidrIp")
        out.extend((proto, port, c) for c in cidrs)
    return out


@action("AuthorizeSecurityGroupIngress")
def authorize_security_group_ingress(call: Call) -> Body:
    g = find(call, call.params)
    for proto, port, cidr in _rules(call.params):
        try:
            security_groups.add_rule(call.svc, call.who, None, g.name, proto, port, cidr)
        except Conflict as e:
            raise Ec2Error("InvalidPermission.Duplicate",
                           f"the rule {proto} {port} {cidr} already exists") from e
    return {"return": True}


@action("RevokeSecurityGroupIngress")
def revoke_security_group_ingress(call: Call) -> Body:
    g = find(call, call.params)
    for proto, port, cidr in _rules(call.params):
        rule = next((r for r in g.rules if (r.proto, r.port, r.cidr) == (proto, port, cidr)),
                    None)
        if rule is None:
            raise Ec2Error("InvalidPermission.NotFound",
                           f"the rule {proto} {port} {cidr} does not exist in {g.name}")
        security_groups.remove_rule(call.svc, call.who, None, g.name, rule.id)
    return {"return": True}
