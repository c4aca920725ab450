"""DescribeRegions, DescribeAvailabilityZones, DescribeInstanceTypes, DescribeImages,
CreateImage, DeregisterImage, DescribeAccountAttributes."""

from __future__ import annotations

from typing import Any

from cumulo.api import image_exports
from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import invalid
from cumulo.api.ec2.registry import Body, Call, action, async_action
from cumulo.services import images

IMAGE_FILTERS = frozenset({"image-id", "name", "architecture", "state", "owner-id",
                           "is-public"})
TYPE_FILTERS = frozenset({"instance-type", "processor-info.supported-architecture",
                          "vcpu-info.default-vcpus", "memory-info.size-in-mib"})


def _endpoint(call: Call) -> str:
    return "127.0.0.1"  # the API's own address: one endpoint serves every region


@action("DescribeRegions")
def describe_regions(call: Call) -> Body:
    wanted = call.params.items("RegionName")
    regions = [r for r in call.svc.settings.regions if not wanted or r.name in wanted]
    return {"regionInfo": [{"regionName": r.name, "regionEndpoint": _endpoint(call),
                            "optInStatus": "opt-in-not-required"} for r in regions]}


@action("DescribeAvailabilityZones")
def describe_availability_zones(call: Call) -> Body:
    wanted = call.params.items("ZoneName")
    known = call.svc.settings.zone_names()
    unknown = [z for z in wanted if z not in known]
    if unknown:
        raise invalid(f"The zone(s) {', '.join(unknown)} do not exist")
    zones = [(r.name, z) for r in call.svc.settings.regions for z in r.zones
             if r.name == call.region and (not wanted or z in wanted)]
    return {"availabilityZoneInfo": [
        {"zoneName": z, "zoneState": "available", "regionName": region, "zoneId": z,
         "zoneType": "availability-zone", "optInStatus": "opt-in-not-required",
         "groupName": region, "networkBorderGroup": region, "messageSet": []}
        for region, z in zones]}


@action("DescribeInstanceTypes")
def describe_instance_types(call: Call) -> Body:
    wanted = call.params.items("InstanceType")
    types = call.svc.settings.instance_types
    unknown = [t for t in wanted if call.svc.settings.instance_type(t) is None]
    if unknown:
        raise invalid(f"The following supplied instance types do not exist: "
                      f"[{', '.join(unknown)}]")
    chosen = [t for t in types if not wanted or t.name in wanted]
    wanted_filters = filters.parse(call.params, TYPE_FILTERS)
    out: list[dict[str, Any]] = []
    for t in chosen:
        archs = [a.value for a in t.architectures]
        fact = {"instance-type": t.name, "processor-info.supported-architecture": archs,
                "vcpu-info.default-vcpus": t.vcpus, "memory-info.size-in-mib": t.ram_mib}
        if filters.matches(wanted_filters, fact, {}):
            out.append({
                "instanceType": t.name, "currentGeneration": True, "bareMetal": t.baremetal,
                # EC2 names no hypervisor for a bare-metal type (a *.metal one): it has none.
                **({} if t.baremetal else {"hypervisor": "xen"}),
                "supportedRootDeviceTypes": ["ebs"],
                "supportedVirtualizationTypes": ["hvm"], "supportedUsageClasses": ["on-demand"],
                "processorInfo": {"supportedArchitectures": archs},
                "vCpuInfo": {"defaultVCpus": t.vcpus, "defaultCores": t.vcpus,
                             "defaultThreadsPerCore": 1},
                "memoryInfo": {"sizeInMiB": t.ram_mib},
                "instanceStorageSupported": False,
                "networkInfo": {"networkPerformance": f"{t.bandwidth_mbps} Mbit/s",
                                "maximumNetworkInterfaces": 1, "ipv4AddressesPerInterface": 1,
                                "ipv6Supported": False},
            })
    page, token = filters.page(out, call.params, low=5, high=100)
    return {"instanceTypeSet": page, "nextToken": token}


def image_items(call: Call) -> list[tuple[dict[str, Any], dict[str, object]]]:
    out = []
    for img in images.list_images(call.svc, call.who, None):
        for v in img.variants:
            owner = img.project or "cumulo"
            state = "available" if v.state == "available" else v.state
            body = {
                "imageId": ids.to_ec2(v.id), "imageLocation": f"{owner}/{img.name}",
                "imageState": state, "imageOwnerId": owner, "isPublic": img.project is None,
                "architecture": v.arch, "imageType": "machine", "name": img.name,
                "description": img.os, "rootDeviceType": "ebs", "rootDeviceName": "/dev/vda",
                "virtualizationType": "hvm", "hypervisor": "xen", "platformDetails": "Linux/UNIX",
                "blockDeviceMapping": [{"deviceName": "/dev/vda", "ebs": {
                    "volumeSize": max(1, -(-v.virtual_size_bytes // 2**30)),
                    "deleteOnTermination": True, "volumeType": "standard"}}],
                "tagSet": [],
            }
            fact = {"image-id": body["imageId"], "name": img.name, "architecture": v.arch,
                    "state": state, "owner-id": owner, "is-public": img.project is None}
            out.append((body, fact))
    return out


@action("DescribeImages")
def describe_images(call: Call) -> Body:
    wanted = call.params.items("ImageId")
    for w in wanted:
        ids.from_ec2(w, "ami")
    owners = call.params.items("Owner")
    every = image_items(call)
    known = {b["imageId"] for b, _ in every}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise ids.not_found("ami", missing[0])
    wanted_filters = filters.parse(call.params, IMAGE_FILTERS)
    chosen = []
    for body, fact in every:
        if wanted and body["imageId"] not in wanted:
            continue
        if owners and not ({"self", call.project} & set(owners) and not body["isPublic"]) \
                and body["imageOwnerId"] not in owners and "amazon" not in owners:
            continue
        if filters.matches(wanted_filters, fact, {}):
            chosen.append(body)
    return {"imagesSet": chosen}


@async_action("CreateImage")
async def create_image(call: Call) -> Body:
    """An image of a stopped instance's boot disk (cumulo copies a stopped disk only: EC2's
    reboot-and-copy of a running instance is refused with IncorrectInstanceState)."""
    instance_id, name = call.params.req("InstanceId"), call.params.req("Name")
    ids.from_ec2(instance_id, "i")
    made = await image_exports.create_from_instance(call.svc, call.who, None, name,
                                                    instance_id)
    return {"imageId": ids.to_ec2(made.variants[0].id)}


@action("DeregisterImage")
def deregister_image(call: Call) -> Body:
    image_id = call.params.req("ImageId")
    ids.from_ec2(image_id, "ami")
    for body, _ in image_items(call):
        if body["imageId"] == image_id:
            if body["isPublic"]:
                raise invalid(f"image {image_id} is public: an admin deletes it (cumulo CLI)")
            images.delete(call.svc, call.who, None, str(body["name"]),
                          arch=str(body["architecture"]))
            return {"return": True}
    raise ids.not_found("ami", image_id)


@action("DescribeAccountAttributes")
def describe_account_attributes(call: Call) -> Body:
    values = {"supported-platforms": ["VPC"], "default-vpc": [ids.to_ec2(call.who.project_id
                                                                        or "")],
              "max-instances": ["1000"], "max-elastic-ips": ["100"],
              "vpc-max-security-groups-per-interface": ["5"]}
    wanted = call.params.items("AttributeName")
    return {"accountAttributeSet": [
        {"attributeName": k, "attributeValueSet": [{"attributeValue": v} for v in vs]}
        for k, vs in values.items() if not wanted or k in wanted]}
