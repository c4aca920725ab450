"""Security groups: stateful ingress allow-lists per instance (egress is always allowed).

Every project has a `default` group letting SSH and ICMP in. A rule change wakes the agents
of every host running a member instance; they re-apply their firewall at once.
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    BaremetalNodeRow,
    HostRow,
    InstanceGroupRow,
    InstanceRow,
    ProjectRow,
    SecurityGroupRow,
)
from cumulo.db.tables import SecurityRuleRow as Rule
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.validation import dns_label, short_text
from cumulo.protocol import FirewallRule
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import SecurityGroupView, SecurityRuleView

DEFAULT_GROUP = "default"
PROTOS = ("tcp", "udp", "icmp")
MAX_DESCRIPTION = 200  # the column's length


def _rules(s: Session, group_id: str) -> list[Rule]:
    return list(s.scalars(select(Rule).where(Rule.group_id == group_id)
                          .order_by(Rule.created_at, Rule.id)))


def _view(s: Session, g: SecurityGroupRow, project: str) -> SecurityGroupView:
    n = s.scalar(select(func.count()).where(InstanceGroupRow.group_id == g.id)) or 0
    return SecurityGroupView(
        id=g.id, name=g.name, project=project, description=g.description, instances=int(n),
        rules=[SecurityRuleView(id=r.id, proto=r.proto, port=r.port, cidr=r.cidr)
               for r in _rules(s, g.id)])


# Built once: every create looks its groups up.
_NAMED = select(SecurityGroupRow).where(SecurityGroupRow.project_id == bindparam("project"),
                                        SecurityGroupRow.name == bindparam("name"))


def ensure_default(s: Session, prj: ProjectRow) -> SecurityGroupRow:
    g = s.scalar(_NAMED, {"project": prj.id, "name": DEFAULT_GROUP})
    if g is None:
        g = SecurityGroupRow(id=new_id("sg"), name=DEFAULT_GROUP, project_id=prj.id,
                             description="SSH and ICMP in, everything out")
        s.add(g)
        s.add(Rule(id=new_id("sgr"), group_id=g.id, proto="tcp", port=22, cidr="0.0.0.0/0"))
        s.add(Rule(id=new_id("sgr"), group_id=g.id, proto="icmp", port=None, cidr="0.0.0.0/0"))
        s.flush()
    return g


def _find(s: Session, prj: ProjectRow, name: str) -> SecurityGroupRow:
    if name == DEFAULT_GROUP:
        return ensure_default(s, prj)
    g = s.scalar(_NAMED, {"project": prj.id, "name": name})
    if g is None:
        raise NotFound(f"no security group {name!r}", code="unknown_security_group")
    return g


def resolve(s: Session, prj: ProjectRow, names: list[str]) -> list[SecurityGroupRow]:
    return [_find(s, prj, n) for n in dict.fromkeys(names or [DEFAULT_GROUP])]


def validate_rule(proto: str, port: int | None, cidr: str) -> tuple[str, int | None, str]:
    if proto not in PROTOS:
        raise InvalidInput(f"unknown protocol {proto!r} (tcp, udp or icmp)",
                           code="invalid_protocol")
    if proto == "icmp" and port is not None:
        raise InvalidInput("icmp rules take no port", code="invalid_port")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"port {port} is outside 1-65535", code="invalid_port")
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise InvalidInput(f"invalid CIDR {cidr!r}: {e}", code="invalid_cidr") from None
    if net.version != 4:
        raise InvalidInput("only IPv4 CIDRs are supported", code="invalid_cidr")
    return proto, port, str(net)


def _member_hosts(s: Session, group_id: str) -> set[str]:
    """The hosts that enforce the group: those of its VMs, and its bare-metal servers' port
    hosts (their NICs' rules are on the host's tap, as a VM's)."""
    members = select(InstanceGroupRow.instance_id).where(InstanceGroupRow.group_id == group_id)
    vms = select(InstanceRow.host_id).where(InstanceRow.id.in_(members))
    ports = (select(HostRow.id).join(BaremetalNodeRow, BaremetalNodeRow.port_host == HostRow.name)
             .where(BaremetalNodeRow.instance_id.in_(members)))
    return {h for h in [*s.scalars(vms), *s.scalars(ports)] if h}


def create(svc: Services, who: Principal, project: str | None, name: str,
           description: str = "") -> SecurityGroupView:
    dns_label(name, "security group name")
    short_text(description, "description", MAX_DESCRIPTION)  # `security-group list` shows it
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        ensure_default(s, prj)
        if s.scalar(select(SecurityGroupRow.id).where(SecurityGroupRow.project_id == prj.id,
                                                      SecurityGroupRow.name == name)):
            raise Conflict(f"security group {name!r} already exists", code="name_taken")
        g = SecurityGroupRow(id=new_id("sg"), name=name, project_id=prj.id,
                             description=description)
        s.add(g)
        s.flush()
        return _view(s, g, prj.name)


def list_all(svc: Services, who: Principal, project: str | None) -> list[SecurityGroupView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        ensure_default(s, prj)
        return [_view(s, g, prj.name) for g in s.scalars(select(SecurityGroupRow).where(
            SecurityGroupRow.project_id == prj.id).order_by(SecurityGroupRow.name))]


def show(svc: Services, who: Principal, project: str | None, name: str) -> SecurityGroupView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        return _view(s, _find(s, prj, name), prj.name)


def delete(svc: Services, who: Principal, project: str | None, name: str) -> None:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        g = _find(s, prj, name)
        if name == DEFAULT_GROUP:
            raise Conflict("the default security group cannot be deleted", code="protected")
        if s.scalar(select(func.count()).where(InstanceGroupRow.group_id == g.id)):
            raise Conflict(f"security group {name!r} is used by instances", code="group_in_use")
        s.delete(g)


def add_rule(svc: Services, who: Principal, project: str | None, group: str, proto: str,
             port: int | None, cidr: str) -> SecurityGroupView:
    proto, port, cidr = validate_rule(proto, port, cidr)
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        g = _find(s, prj, group)
        if any((r.proto, r.port, r.cidr) == (proto, port, cidr) for r in _rules(s, g.id)):
            raise Conflict("this rule already exists", code="duplicate_rule")
        s.add(Rule(id=new_id("sgr"), group_id=g.id, proto=proto, port=port, cidr=cidr))
        s.flush()
        result, hosts = _view(s, g, prj.name), _member_hosts(s, g.id)
    for h in hosts:
        svc.notifier.notify(h)
    return result


def remove_rule(svc: Services, who: Principal, project: str | None, group: str,
                rule_id: str) -> SecurityGroupView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        g = _find(s, prj, group)
        rule = s.scalar(select(Rule).where(Rule.group_id == g.id, Rule.id == rule_id))
        if rule is None:
            raise NotFound(f"no rule {rule_id!r} in group {group!r}", code="unknown_rule")
        s.delete(rule)
        s.flush()
        result, hosts = _view(s, g, prj.name), _member_hosts(s, g.id)
    for h in hosts:
        svc.notifier.notify(h)
    return result


# Built once: every long-poll answer that reads an instance runs it.
_INGRESS = (select(InstanceGroupRow.instance_id, Rule.proto, Rule.port, Rule.cidr)
            .join(Rule, Rule.group_id == InstanceGroupRow.group_id)
            .where(InstanceGroupRow.instance_id.in_(bindparam("ids", expanding=True)))
            .order_by(Rule.created_at, Rule.id))


def ingress_for(s: Session, instance_ids: list[str]) -> dict[str, list[FirewallRule]]:
    """Per instance: the union of its groups' rules (deduplicated, stable order)."""
    out: dict[str, list[FirewallRule]] = {i: [] for i in instance_ids}
    seen: dict[str, set[tuple[str, int | None, str]]] = {i: set() for i in instance_ids}
    for iid, proto, port, cidr in s.connection().execute(_INGRESS, {"ids": instance_ids}):
        if (proto, port, cidr) not in seen[iid]:
            seen[iid].add((proto, port, cidr))
            out[iid].append(FirewallRule(proto=proto, port=port, cidr=cidr))
    return out
