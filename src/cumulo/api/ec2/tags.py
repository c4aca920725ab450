"""CreateTags, DeleteTags, DescribeTags: on instances (their own tags) and on volumes and
snapshots (services.resource_tags)."""

from __future__ import annotations

from typing import Any

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import Ec2Error, invalid
from cumulo.api.ec2.instance_view import everything
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.services import instances, resource_tags, volumes

FILTERS = frozenset({"resource-id", "resource-type", "key", "value"})
_KINDS = {"i": "instance", "vol": "volume", "snap": "snapshot"}


def _kind(resource_id: str) -> str:
    prefix = resource_id.partition("-")[0]
    if prefix not in _KINDS:
        raise invalid(f"cumulo tags instances, volumes and snapshots, not {resource_id!r}")
    ids.from_ec2(resource_id, prefix)
    return prefix


def _check_exists(call: Call, resource_id: str, prefix: str) -> None:
    if prefix == "vol":
        known = {v.id for v in volumes.list_all(call.svc, call.who, None)}
    elif prefix == "snap":
        known = {s.id for s in volumes.list_snapshots(call.svc, call.who, None)}
    else:
        known = {s.view.id for s in everything(call) if not s.gone_at}
    if resource_id not in known:
        raise ids.not_found(prefix, resource_id)


def _change(call: Call, add: dict[str, str], remove: dict[str, str | None]) -> None:
    targets = call.params.items("ResourceId")
    if not targets:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ResourceId")
    kinds = [(r, _kind(r)) for r in targets]
    for r, prefix in kinds:
        _check_exists(call, r, prefix)
    for r, prefix in kinds:
        if prefix == "i":
            instances.retag(call.svc, call.who, None, r, add, remove)
        else:
            resource_tags.retag(call.svc, call.who, None, r, add, remove)


@action("CreateTags")
def create_tags(call: Call) -> Body:
    add = {t.req("Key"): t.text("Value") or "" for t in call.params.structs("Tag")}
    _change(call, add, {})
    return {"return": True}


@action("DeleteTags")
def delete_tags(call: Call) -> Body:
    remove = {t.req("Key"): t.text("Value") for t in call.params.structs("Tag")}
    if not call.params.structs("Tag"):
        remove = {}
        for r in call.params.items("ResourceId"):  # no Tag.N: every tag of the resources
            remove |= {k: None for k in _tags_of(call).get(r, {})}
    _change(call, {}, remove)
    return {"return": True}


def _tags_of(call: Call) -> dict[str, dict[str, str]]:
    out = resource_tags.of(call.svc, call.who, None)
    for s in everything(call):
        if not s.gone_at and s.view.tags:
            out[s.view.id] = s.view.tags
    return out


@action("DescribeTags")
def describe_tags(call: Call) -> Body:
    wanted = filters.parse(call.params, FILTERS)
    rows: list[dict[str, Any]] = []
    for resource_id, tags in sorted(_tags_of(call).items()):
        kind = _KINDS.get(resource_id.partition("-")[0], "")
        for key, value in sorted(tags.items()):
            fact = {"resource-id": resource_id, "resource-type": kind, "key": key,
                    "value": value}
            if filters.matches(wanted, fact, {}):
                rows.append({"resourceId": resource_id, "resourceType": kind, "key": key,
                             "value": value})
    page, token = filters.page(rows, call.params)
    return {"tagSet": page, "nextToken": token}
