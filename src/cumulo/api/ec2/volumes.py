"""CreateVolume, DescribeVolumes, AttachVolume, DetachVolume, ModifyVolume, DeleteVolume
(snapshots: snapshots.py)."""

from __future__ import annotations

import secrets
from typing import Any

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import Ec2Error, invalid
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.api.ec2.run import digest
from cumulo.services import client_tokens, device_names, instances, resource_tags, volumes
from cumulo.services.views import VolumeView

FILTERS = frozenset({"volume-id", "status", "availability-zone", "size", "volume-type",
                     "attachment.instance-id", "attachment.status", "snapshot-id"})
# cumulo's volume states as EC2's (volume state, attachment state)
_STATES = {
    "creating": ("creating", None), "available": ("available", None),
    "attaching": ("in-use", "attaching"), "in-use": ("in-use", "attached"),
    "detaching": ("in-use", "detaching"), "deleting": ("deleting", None),
    "error": ("error", None),
}


def new_name() -> str:
    return f"ec2-{secrets.token_hex(6)}"


def snapshot_ids(call: Call) -> dict[str, str]:
    """snapshot name -> id."""
    return {s.name: s.id for s in volumes.list_snapshots(call.svc, call.who, None)}


def device(v: VolumeView, names: dict[str, str]) -> str:
    """The name the volume was attached as by EC2, else the guest's (`/dev/vdc`)."""
    return names.get(v.id) or (f"/dev/{v.device}" if v.device else "")


def _item(v: VolumeView, instance_ids: dict[str, str], snaps: dict[str, str],
          tags: dict[str, str], devices: dict[str, str]) -> dict[str, Any]:
    state, attach = _STATES.get(v.state, (v.state, None))
    attachments = []
    if v.attached_to and attach:
        attachments = [{"volumeId": v.id, "instanceId": instance_ids.get(v.attached_to, ""),
                        "device": device(v, devices), "status": attach,
                        "attachTime": v.created_at,
                        "deleteOnTermination": v.delete_on_termination}]
    return {"volumeId": v.id, "size": v.size_gib, "availabilityZone": v.zone, "status": state,
            "createTime": v.created_at, "attachmentSet": attachments,
            "volumeType": v.type, "iops": v.iops, "throughput": v.mbps, "encrypted": False,
            "multiAttachEnabled": False,
            "snapshotId": snaps.get(v.source_snapshot or "", "") if v.source_snapshot else "",
            "tagSet": filters.tag_set(tags)}


def _items(call: Call) -> list[tuple[VolumeView, dict[str, Any], dict[str, str]]]:
    names = {i.name: i.id for i in instances.list_all(call.svc, call.who, None)}
    snaps = snapshot_ids(call)
    tags = resource_tags.of(call.svc, call.who, None)
    devices = device_names.of(call.svc, call.who, None)
    return [(v, _item(v, names, snaps, tags.get(v.id, {}), devices), tags.get(v.id, {}))
            for v in volumes.list_all(call.svc, call.who, None)]


def find(call: Call, volume_id: str) -> VolumeView:
    ids.from_ec2(volume_id, "vol")
    for v in volumes.list_all(call.svc, call.who, None):
        if v.id == volume_id:
            return v
    raise ids.not_found("vol", volume_id)


@action("DescribeVolumes")
def describe_volumes(call: Call) -> Body:
    wanted = call.params.items("VolumeId")
    every = _items(call)
    ids.require_known(wanted, {v.id for v, _, _ in every}, "vol")
    wanted_filters = filters.parse(call.params, FILTERS)
    chosen = []
    for v, body, tags in every:
        att = body["attachmentSet"][0] if body["attachmentSet"] else {}
        fact = {"volume-id": v.id, "status": body["status"], "availability-zone": v.zone,
                "size": v.size_gib, "volume-type": v.type, "snapshot-id": body["snapshotId"],
                "attachment.instance-id": att.get("instanceId"),
                "attachment.status": att.get("status")}
        if (not wanted or v.id in wanted) and filters.matches(wanted_filters, fact, tags):
            chosen.append(body)
    page, token = filters.page(chosen, call.params)
    return {"volumeSet": page, "nextToken": token}


def _create(call: Call) -> str:
    p = call.params
    snap = p.text("SnapshotId")
    snap_name = None
    if snap is not None:
        ids.from_ec2(snap, "snap")
        names = {i: n for n, i in snapshot_ids(call).items()}
        if snap not in names:
            raise ids.not_found("snap", snap)
        snap_name = names[snap]
    size = p.integer("Size", low=1, high=call.svc.settings.max_volume_gib)
    if size is None:
        if snap_name is None:
            raise Ec2Error("MissingParameter", "The request must contain Size or SnapshotId")
        size = next(s.size_gib for s in volumes.list_snapshots(call.svc, call.who, None)
                    if s.id == snap)
    zone = p.req("AvailabilityZone")
    kind = p.text("VolumeType") or "standard"
    tags: dict[str, str] = {}
    for spec in p.structs("TagSpecification"):
        if spec.req("ResourceType") != "volume":
            raise invalid("CreateVolume tags a volume only")
        tags |= {t.req("Key"): t.text("Value") or "" for t in spec.structs("Tag")}
    v = volumes.create(call.svc, call.who, None, new_name(), size, zone=zone, type_name=kind,
                       from_snapshot=snap_name)
    if tags:
        resource_tags.retag(call.svc, call.who, None, v.id, tags, {})
    return v.id


@action("CreateVolume")
def create_volume(call: Call) -> Body:
    token = call.params.text("ClientToken")
    made = client_tokens.claim(call.svc, call.who, call.action, token, digest(call)) \
        if token else None
    if made is None:
        try:
            volume_id = _create(call)
        except BaseException:
            if token:
                client_tokens.release(call.svc, call.who, call.action, token)
            raise
        if token:
            client_tokens.fulfil(call.svc, call.who, call.action, token, [volume_id])
    else:
        volume_id = made[0]
    found = [body for v, body, _ in _items(call) if v.id == volume_id]
    if not found:
        raise ids.not_found("vol", volume_id)
    body = dict(found[0])
    body.pop("attachmentSet")
    return body


def _attachment(call: Call, v: VolumeView, status: str, instance_id: str) -> Body:
    return {"volumeId": v.id, "instanceId": instance_id,
            "device": device(v, device_names.of(call.svc, call.who, None)), "status": status,
            "attachTime": v.created_at}


@action("AttachVolume")
def attach_volume(call: Call) -> Body:
    volume_id, instance_id = call.params.req("VolumeId"), call.params.req("InstanceId")
    find(call, volume_id)
    ids.from_ec2(instance_id, "i")
    # The API shows the device name asked for, as EC2 does; the guest sees the next virtio
    # disk (/dev/vdX), whose serial is the volume id without its dash.
    name = device_names.check(call.params.req("Device"))
    v = volumes.attach(call.svc, call.who, None, volume_id, instance_id)
    device_names.remember(call.svc, call.who, None, volume_id, name)
    return _attachment(call, v, "attaching", instance_id)


@action("DetachVolume")
def detach_volume(call: Call) -> Body:
    volume_id = call.params.req("VolumeId")
    before = find(call, volume_id)
    names = {i.name: i.id for i in instances.list_all(call.svc, call.who, None)}
    instance_id = names.get(before.attached_to or "", "")
    wanted = call.params.text("InstanceId")
    if wanted is not None and wanted != instance_id:
        raise Ec2Error("IncorrectState", f"volume {volume_id} is not attached to {wanted}")
    v = volumes.detach(call.svc, call.who, None, volume_id)
    return _attachment(call, v, "detaching", instance_id)


@action("ModifyVolume")
def modify_volume(call: Call) -> Body:
    volume_id = call.params.req("VolumeId")
    before = find(call, volume_id)
    size = call.params.integer("Size", low=1, high=call.svc.settings.max_volume_gib)
    if call.params.text("VolumeType") not in (None, before.type) or \
            call.params.text("Iops") or call.params.text("Throughput"):
        raise invalid("cumulo changes a volume's size only")
    if size is None:
        raise Ec2Error("MissingParameter", "The request must contain Size")
    v = volumes.resize(call.svc, call.who, None, volume_id, size)
    return {"volumeModification": {
        "volumeId": v.id, "modificationState": "optimizing", "targetSize": size,
        "originalSize": before.size_gib, "targetVolumeType": v.type,
        "originalVolumeType": before.type, "progress": 0, "startTime": v.created_at}}


@action("DeleteVolume")
def delete_volume(call: Call) -> Body:
    volume_id = call.params.req("VolumeId")
    find(call, volume_id)
    volumes.delete(call.svc, call.who, None, volume_id)
    resource_tags.forget(call.svc, call.who, None, volume_id)
    return {"return": True}
