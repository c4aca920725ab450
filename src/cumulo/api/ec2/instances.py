"""DescribeInstances, DescribeInstanceStatus, Start/Stop/Reboot/TerminateInstances,
GetConsoleOutput, Describe/ModifyInstanceAttribute (RunInstances: run.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from cumulo.api import console
from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import Ec2Error, invalid
from cumulo.api.ec2.instance_view import FILTERS, Seen, context, everything, facts, item, state_of
from cumulo.api.ec2.registry import Body, Call, action, async_action
from cumulo.api.threads import service
from cumulo.domain.instance import Action
from cumulo.services import instances

STATUS_FILTERS = frozenset({"instance-id", "instance-state-name", "instance-state-code",
                            "availability-zone", "instance-status.status",
                            "system-status.status"})


def select_ids(call: Call, seen: list[Seen]) -> list[Seen]:
    """`InstanceId.N` of the call (all if none), each of which must be the project's."""
    wanted = call.params.items("InstanceId")
    if not wanted:
        return seen
    by_id = {s.view.id: s for s in seen}
    for w in wanted:
        ids.from_ec2(w, "i")
    missing = [w for w in wanted if w not in by_id]
    if missing:
        raise Ec2Error("InvalidInstanceID.NotFound",
                       f"The instance IDs '{', '.join(missing)}' do not exist")
    return [by_id[w] for w in dict.fromkeys(wanted)]


def one(call: Call, instance_id: str) -> Seen:
    """The project's live instance `instance_id` (a scalar InstanceId parameter)."""
    ids.from_ec2(instance_id, "i")
    for s in everything(call):
        if s.view.id == instance_id and not s.gone_at:
            return s
    raise ids.not_found("i", instance_id)


@action("DescribeInstances")
def describe_instances(call: Call) -> Body:
    ctx = context(call)
    chosen = select_ids(call, everything(call))
    wanted = filters.parse(call.params, FILTERS)
    matched = [s for s in chosen if filters.matches(wanted, facts(s, ctx), s.view.tags)]
    page, token = filters.page(matched, call.params)
    reservations = [{"reservationId": ids.reservation(s.view.id), "ownerId": call.owner_id,
                     "groupSet": [], "instancesSet": [item(s, ctx)]} for s in page]
    return {"reservationSet": reservations, "nextToken": token}


def _status(seen: Seen) -> dict[str, Any]:
    running = seen.state[1] == "running"
    impaired = running and seen.view.state == "paused"  # frozen by the hypervisor
    word = "impaired" if impaired else "ok" if running else "not-applicable"
    check = "failed" if impaired else "passed" if running else "not-applicable"
    details = [{"name": "reachability", "status": check}]
    return {"instanceId": seen.view.id, "availabilityZone": seen.view.zone,
            "instanceState": state_of(seen.state), "eventsSet": [],
            "systemStatus": {"status": word, "details": details},
            "instanceStatus": {"status": word, "details": details}}


@action("DescribeInstanceStatus")
def describe_instance_status(call: Call) -> Body:
    everyone = call.params.flag("IncludeAllInstances")
    chosen = select_ids(call, [s for s in everything(call) if not s.gone_at])
    wanted = filters.parse(call.params, STATUS_FILTERS)
    out = []
    for s in chosen:
        if not everyone and s.state[1] != "running":
            continue
        status = _status(s)
        fact = {"instance-id": s.view.id, "instance-state-name": s.state[1],
                "instance-state-code": s.state[0], "availability-zone": s.view.zone,
                "instance-status.status": status["instanceStatus"]["status"],
                "system-status.status": status["systemStatus"]["status"]}
        if filters.matches(wanted, fact, {}):
            out.append(status)
    page, token = filters.page(out, call.params)
    return {"instanceStatusSet": page, "nextToken": token}


# The states in which EC2 answers a request with no change (a stop of a stopped instance).
_ALREADY = {
    Action.START: {"pending", "running"},
    Action.STOP: {"stopping", "stopped"},
    Action.DELETE: {"shutting-down", "terminated"},
}


def _change(call: Call, act: Action) -> list[dict[str, Any]]:
    chosen = select_ids(call, everything(call))
    if not call.params.items("InstanceId"):
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    changed = []
    for s in chosen:
        before = s.state
        if before[1] in _ALREADY.get(act, set()):
            changed.append({"instanceId": s.view.id, "previousState": state_of(before),
                            "currentState": state_of(before)})
            continue
        if s.gone_at:
            raise Ec2Error("IncorrectInstanceState",
                           f"The instance '{s.view.id}' is terminated")
        after = instances.act(call.svc, call.who, None, s.view.id, act)
        changed.append({"instanceId": s.view.id, "previousState": state_of(before),
                        "currentState": state_of(Seen(after).state)})
    return changed


@action("StartInstances")
def start_instances(call: Call) -> Body:
    return {"instancesSet": _change(call, Action.START)}


@action("StopInstances")
def stop_instances(call: Call) -> Body:
    return {"instancesSet": _change(call, Action.STOP)}


@action("TerminateInstances")
def terminate_instances(call: Call) -> Body:
    return {"instancesSet": _change(call, Action.DELETE)}


@action("RebootInstances")
def reboot_instances(call: Call) -> Body:
    _change(call, Action.REBOOT)
    return {"return": True}


@async_action("GetConsoleOutput")
async def get_console_output(call: Call) -> Body:
    instance_id = call.params.req("InstanceId")
    ids.from_ec2(instance_id, "i")
    target = await service(call.svc, instances.console_target, call.svc, call.who, None,
                           instance_id)
    text = await console.fetch(target)
    return {"instanceId": instance_id, "timestamp": datetime.now(UTC),
            "output": base64.b64encode(text.encode()).decode()}


@action("ModifyInstanceAttribute")
def modify_instance_attribute(call: Call) -> Body:
    p = call.params
    instance_id = p.req("InstanceId")
    ids.from_ec2(instance_id, "i")
    new_type = p.text("InstanceType.Value")
    if new_type is None and p.text("Attribute") == "instanceType":
        new_type = p.text("Value")
    if new_type is None:
        raise invalid("cumulo changes only the instanceType attribute (of a stopped instance)")
    instances.resize(call.svc, call.who, None, instance_id, new_type)
    return {"return": True}


@action("DescribeInstanceAttribute")
def describe_instance_attribute(call: Call) -> Body:
    instance_id, attribute = call.params.req("InstanceId"), call.params.req("Attribute")
    rendered = item(one(call, instance_id), context(call))
    values: dict[str, object] = {
        "instanceType": {"value": rendered["instanceType"]},
        "groupSet": rendered["groupSet"],
        "disableApiTermination": {"value": False},
        "ebsOptimized": {"value": False},
        "enaSupport": {"value": False},
        "sourceDestCheck": {"value": True},
        "instanceInitiatedShutdownBehavior": {"value": "stop"},
        "rootDeviceName": {"value": rendered["rootDeviceName"]},
        "blockDeviceMapping": rendered["blockDeviceMapping"],
    }
    if attribute not in values:
        raise invalid(f"cumulo does not show the attribute {attribute!r} (it shows "
                      f"{', '.join(values)})")
    return {"instanceId": instance_id, attribute: values[attribute]}
