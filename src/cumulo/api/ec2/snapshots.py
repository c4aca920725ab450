"""CreateSnapshot, DescribeSnapshots, DeleteSnapshot."""

from __future__ import annotations

from typing import Any

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.api.ec2.volumes import find, new_name
from cumulo.services import resource_tags, volumes
from cumulo.services.views import SnapshotView

FILTERS = frozenset({"snapshot-id", "volume-id", "status", "owner-id", "volume-size"})
_STATES = {"creating": "pending", "available": "completed", "error": "error",
           "deleting": "completed"}


def _item(call: Call, s: SnapshotView, volume_ids: dict[str, str],
          tags: dict[str, str], description: str = "") -> dict[str, Any]:
    return {"snapshotId": s.id, "volumeId": volume_ids.get(s.volume or "", "vol-ffffffff"),
            "status": _STATES.get(s.state, s.state), "startTime": s.created_at,
            "progress": "100%" if s.state == "available" else "0%",
            "ownerId": call.owner_id, "volumeSize": s.size_gib, "encrypted": False,
            "description": description, "storageTier": "standard",
            "tagSet": filters.tag_set(tags)}


@action("CreateSnapshot")
def create_snapshot(call: Call) -> Body:
    volume_id = call.params.req("VolumeId")
    vol = find(call, volume_id)
    snap = volumes.snapshot(call.svc, call.who, None, volume_id, new_name())
    tags: dict[str, str] = {}
    for spec in call.params.structs("TagSpecification"):
        tags |= {t.req("Key"): t.text("Value") or "" for t in spec.structs("Tag")}
    if tags:
        resource_tags.retag(call.svc, call.who, None, snap.id, tags, {})
    return _item(call, snap, {vol.name: vol.id}, tags, call.params.text("Description") or "")


@action("DescribeSnapshots")
def describe_snapshots(call: Call) -> Body:
    snaps = volumes.list_snapshots(call.svc, call.who, None)
    volume_ids = {v.name: v.id for v in volumes.list_all(call.svc, call.who, None)}
    tags = resource_tags.of(call.svc, call.who, None)
    wanted = call.params.items("SnapshotId")
    ids.require_known(wanted, {s.id for s in snaps}, "snap")
    wanted_filters = filters.parse(call.params, FILTERS)
    chosen = []
    for s in snaps:
        body = _item(call, s, volume_ids, tags.get(s.id, {}))
        fact = {"snapshot-id": s.id, "volume-id": body["volumeId"], "status": body["status"],
                "owner-id": call.owner_id, "volume-size": s.size_gib}
        if (not wanted or s.id in wanted) and filters.matches(wanted_filters, fact,
                                                              tags.get(s.id, {})):
            chosen.append(body)
    page, token = filters.page(chosen, call.params)
    return {"snapshotSet": page, "nextToken": token}


@action("DeleteSnapshot")
def delete_snapshot(call: Call) -> Body:
    snap_id = call.params.req("SnapshotId")
    ids.from_ec2(snap_id, "snap")
    if snap_id not in {s.id for s in volumes.list_snapshots(call.svc, call.who, None)}:
        raise ids.not_found("snap", snap_id)
    volumes.delete_snapshot(call.svc, call.who, None, snap_id)
    resource_tags.forget(call.svc, call.who, None, snap_id)
    return {"return": True}
