"""Networks, key pairs, security groups and public IPs."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cumulo.api.deps import Svc, Who
from cumulo.api.inputs import Input
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict, InsufficientCapacity, NotFound
from cumulo.services import keypairs, networks, public_ips, security_groups
from cumulo.services.views import KeyPairView, NetworkView, PublicIpView, SecurityGroupView

router = APIRouter(prefix="/v1", tags=["networking"])


class NetworkCreate(Input):
    name: str
    cidr: str
    zone: str | None = None


@router.post("/networks", status_code=201,
             responses=raises(NotFound, Conflict, InsufficientCapacity))
def create_network(svc: Svc, who: Who, body: NetworkCreate,
                   project: str | None = None) -> NetworkView:
    return networks.create(svc, who, project, body.name, body.cidr, body.zone)


@router.get("/networks")
def list_networks(svc: Svc, who: Who, project: str | None = None) -> list[NetworkView]:
    return networks.list_all(svc, who, project)


@router.delete("/networks/{name}", status_code=204, responses=raises(Conflict))
def delete_network(svc: Svc, who: Who, name: str, zone: str | None = None,
                   project: str | None = None) -> Response:
    networks.delete(svc, who, project, name, zone)
    return Response(status_code=204)


class KeyImport(Input):
    name: str
    public_key: str | None = None  # absent: cumulo generates the pair


@router.post("/keypairs", status_code=201, responses=raises(Conflict))
def create_keypair(svc: Svc, who: Who, body: KeyImport,
                   project: str | None = None) -> KeyPairView:
    if body.public_key is None:
        return keypairs.create(svc, who, project, body.name)
    return keypairs.import_key(svc, who, project, body.name, body.public_key)


@router.get("/keypairs")
def list_keypairs(svc: Svc, who: Who, project: str | None = None) -> list[KeyPairView]:
    return keypairs.list_all(svc, who, project)


@router.delete("/keypairs/{name}", status_code=204)
def delete_keypair(svc: Svc, who: Who, name: str, project: str | None = None) -> Response:
    keypairs.delete(svc, who, project, name)
    return Response(status_code=204)


class GroupCreate(Input):
    name: str
    description: str = ""


class RuleCreate(Input):
    proto: str
    port: int | None = None
    cidr: str = "0.0.0.0/0"


@router.post("/security-groups", status_code=201, responses=raises(Conflict))
def create_group(svc: Svc, who: Who, body: GroupCreate,
                 project: str | None = None) -> SecurityGroupView:
    return security_groups.create(svc, who, project, body.name, body.description)


@router.get("/security-groups")
def list_groups(svc: Svc, who: Who, project: str | None = None) -> list[SecurityGroupView]:
    return security_groups.list_all(svc, who, project)


@router.get("/security-groups/{name}")
def show_group(svc: Svc, who: Who, name: str, project: str | None = None) -> SecurityGroupView:
    return security_groups.show(svc, who, project, name)


@router.delete("/security-groups/{name}", status_code=204, responses=raises(Conflict))
def delete_group(svc: Svc, who: Who, name: str, project: str | None = None) -> Response:
    security_groups.delete(svc, who, project, name)
    return Response(status_code=204)


@router.post("/security-groups/{name}/rules", status_code=201, responses=raises(Conflict))
def add_rule(svc: Svc, who: Who, name: str, body: RuleCreate,
             project: str | None = None) -> SecurityGroupView:
    return security_groups.add_rule(svc, who, project, name, body.proto, body.port, body.cidr)


@router.delete("/security-groups/{name}/rules/{rule_id}")
def remove_rule(svc: Svc, who: Who, name: str, rule_id: str,
                project: str | None = None) -> SecurityGroupView:
    return security_groups.remove_rule(svc, who, project, name, rule_id)


@router.post("/public-ips", status_code=201, responses=raises(InsufficientCapacity))
def allocate_ip(svc: Svc, who: Who, project: str | None = None) -> PublicIpView:
    return public_ips.allocate(svc, who, project)


@router.get("/public-ips")
def list_ips(svc: Svc, who: Who, project: str | None = None) -> list[PublicIpView]:
    return public_ips.list_all(svc, who, project)


class Attach(Input):
    instance: str
    # EC2's AllowReassociation: take the address from the instance holding it, and replace
    # the target's own public IP. Without it either is refused (ip_in_use).
    reassociate: bool = False


@router.post("/public-ips/{ip}/attach", responses=raises(Conflict))
def attach_ip(svc: Svc, who: Who, ip: str, body: Attach,
              project: str | None = None) -> PublicIpView:
    return public_ips.attach(svc, who, project, ip, body.instance, body.reassociate)


@router.post("/public-ips/{ip}/detach", responses=raises(Conflict))
def detach_ip(svc: Svc, who: Who, ip: str, project: str | None = None) -> PublicIpView:
    return public_ips.detach(svc, who, project, ip)


@router.delete("/public-ips/{ip}", status_code=204, responses=raises(Conflict))
def release_ip(svc: Svc, who: Who, ip: str, project: str | None = None) -> Response:
    public_ips.release(svc, who, project, ip)
    return Response(status_code=204)
