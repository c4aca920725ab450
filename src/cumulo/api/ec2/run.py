"""RunInstances: EC2's parameters as cumulo's create requests, MinCount/MaxCount, ClientToken."""

from __future__ import annotations

import hashlib
import secrets

from cumulo.api.ec2 import hosts, ids
from cumulo.api.ec2.errors import Ec2Error, from_cumulo, invalid
from cumulo.api.ec2.instance_view import context, everything, item
from cumulo.api.ec2.params import Params
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.domain.errors import CumuloError
from cumulo.domain.instance import Action
from cumulo.domain.validation import base64_user_data
from cumulo.services import client_tokens, images, instances, networks, security_groups
from cumulo.services.views import ImageVariantView, ImageView

MAX_COUNT = 100
# The parameters that are not the request's meaning (its signature, its token).
_NOT_MEANING = ("ClientToken", "X-Amz-")


def image_variant(call: Call, image_id: str) -> tuple[ImageView, ImageVariantView]:
    wanted = ids.from_ec2(image_id, "ami")
    for img in images.list_images(call.svc, call.who, None):
        for variant in img.variants:
            if variant.id == wanted:
                return img, variant
    raise ids.not_found("ami", image_id)


def digest(call: Call) -> str:
    """What two requests with one client token must share: every other parameter."""
    flat = {k: v for k, v in call.params.flat().items() if not k.startswith(_NOT_MEANING)}
    return hashlib.sha256(repr(sorted(flat.items())).encode()).hexdigest()


def _tags(call: Call) -> dict[str, str]:
    tags: dict[str, str] = {}
    for spec in call.params.structs("TagSpecification"):
        kind = spec.req("ResourceType")
        if kind not in ("instance", "volume", "network-interface"):
            raise invalid(f"cumulo cannot tag a {kind!r} at launch")
        if kind == "instance":
            for tag in spec.structs("Tag"):
                tags[tag.req("Key")] = tag.text("Value") or ""
    return tags


def _interface(call: Call) -> Params | None:
    """The one network interface a NetworkInterface.1 asks for (how Ansible launches)."""
    nics = call.params.structs("NetworkInterface")
    if not nics:
        return None
    nic = nics[0]
    if len(nics) > 1 or nic.integer("DeviceIndex", default=0) != 0:
        raise invalid("cumulo instances have one network interface (DeviceIndex 0)")
    if nic.text("NetworkInterfaceId") is not None:
        raise invalid("cumulo makes an instance's network interface itself")
    for name in ("SubnetId", "PrivateIpAddress"):
        if nic.text(name) is not None and call.params.text(name) is not None:
            raise invalid(f"give {name} once: on the instance or on its network interface")
    if nic.items("SecurityGroupId") and (call.params.items("SecurityGroupId")
                                        or call.params.items("SecurityGroup")):
        raise invalid("give the security groups once: on the instance or its interface")
    return nic


def _groups(call: Call, nic: Params | None) -> list[str]:
    names = call.params.items("SecurityGroup")
    wanted = call.params.items("SecurityGroupId") or (nic.items("SecurityGroupId") if nic
                                                      else [])
    if wanted:
        by_id = {ids.to_ec2(g.id): g.name for g in security_groups.list_all(call.svc, call.who,
                                                                           None)}
        for gid in wanted:
            ids.from_ec2(gid, "sg")
            if gid not in by_id:
                raise Ec2Error("InvalidGroup.NotFound",
                               f"The security group '{gid}' does not exist")
            names.append(by_id[gid])
    return list(dict.fromkeys(names))


def _network(call: Call, zone: str | None, nic: Params | None
             ) -> tuple[str | None, str | None]:
    """(network name, zone) of SubnetId, if given."""
    subnet = call.params.text("SubnetId") or (nic.text("SubnetId") if nic else None)
    if subnet is None:
        return None, zone
    wanted = ids.from_ec2(subnet, "subnet")
    net = next((n for n in networks.list_all(call.svc, call.who, None) if n.id == wanted), None)
    if net is None:
        raise ids.not_found("subnet", subnet)
    if zone is not None and zone != net.zone:
        raise invalid(f"subnet {subnet} is in {net.zone}, not in {zone}")
    return net.name, net.zone


def _root_size(call: Call) -> int | None:
    sizes = [m.integer("Ebs.VolumeSize", low=1, high=16384)
             for m in call.params.structs("BlockDeviceMapping")]
    given = [s for s in sizes if s is not None]
    if len(given) > 1:
        raise invalid("cumulo sets the root disk's size only (one BlockDeviceMapping)")
    return given[0] if given else None


def requests(call: Call, count: int) -> list[instances.CreateInstance]:
    p = call.params
    img, variant = image_variant(call, p.req("ImageId"))
    type_name = p.text("InstanceType") or call.svc.settings.instance_types[0].name
    nic = _interface(call)
    network, zone = _network(call, p.text("Placement.AvailabilityZone"), nic)
    key = p.text("KeyName")
    private_ip = p.text("PrivateIpAddress") or (nic.text("PrivateIpAddress") if nic else None)
    if private_ip and count > 1:
        raise invalid("a PrivateIpAddress takes one instance (MaxCount=1)")
    tenancy, dedicated_host = hosts.tenancy(call)
    return [instances.CreateInstance(
        name=f"ec2-{secrets.token_hex(6)}", image=img.name, arch=variant.arch,
        type=type_name, zone=zone, user_data=base64_user_data(p.text("UserData")), tags=_tags(call),
        keys=[key] if key else [], security_groups=_groups(call, nic), network=network,
        private_ip=private_ip, disk_gib=_root_size(call), tenancy=tenancy,
        dedicated_host=dedicated_host,
    ) for _ in range(count)]


def _launch(call: Call, low: int, high: int) -> list[str]:
    reqs = requests(call, high)
    results = instances.create_many(
        call.svc, [instances.CreateCall(call.who, None, r) for r in reqs])
    made = [r.id for r in results if not isinstance(r, CumuloError)]
    errors = [r for r in results if isinstance(r, CumuloError)]
    if len(made) < low:
        for instance_id in made:  # all or nothing below MinCount
            instances.act(call.svc, call.who, None, instance_id, Action.DELETE)
        raise from_cumulo(errors[0])
    return made


@action("RunInstances")
def run_instances(call: Call) -> Body:
    p = call.params
    low = p.integer("MinCount", low=1, high=MAX_COUNT)
    high = p.integer("MaxCount", low=1, high=MAX_COUNT)
    if low is None or high is None:
        raise Ec2Error("MissingParameter", "The request must contain MinCount and MaxCount")
    if low > high:
        raise invalid(f"MinCount ({low}) is greater than MaxCount ({high})")
    token = p.text("ClientToken")
    made: list[str] | None = None
    if token:
        made = client_tokens.claim(call.svc, call.who, call.action, token, digest(call))
    if made is None:
        try:
            made = _launch(call, low, high)
        except BaseException:
            if token:
                client_tokens.release(call.svc, call.who, call.action, token)
            raise
        if token:
            client_tokens.fulfil(call.svc, call.who, call.action, token, made)
    ctx = context(call)
    by_id = {s.view.id: s for s in everything(call)}
    items = [item(by_id[i], ctx) for i in made if i in by_id]
    return {"reservationId": ids.reservation(made[0]), "ownerId": call.owner_id,
            "groupSet": [], "instancesSet": items}
