"""AllocateHosts, DescribeHosts, ReleaseHosts: EC2's Dedicated Hosts are cumulo's dedicated
hosts (services/dedicated_hosts.py), ids and all (`h-<17 hex>` in both). RunInstances places
on them with Placement.Tenancy and Placement.HostId (run.py)."""

from __future__ import annotations

from typing import Any

from cumulo.api.ec2 import filters, ids
from cumulo.api.ec2.errors import from_cumulo, invalid
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.domain.errors import CumuloError
from cumulo.services import dedicated_hosts, instances
from cumulo.services.views import DedicatedHostView

FILTERS = frozenset({"availability-zone", "state"})
MAX_QUANTITY = 16
_CODES = {"unknown_dedicated_host": "InvalidHostID.NotFound",
          "invalid_dedicated_host": "InvalidHostID.Malformed",
          "no_host_available": "InsufficientHostCapacity",
          "quota_exceeded": "HostLimitExceeded",
          "dedicated_host_in_use": "IncorrectHostState",
          "dedicated_host_released": "IncorrectHostState"}


def _item(call: Call, h: DedicatedHostView, instance_ids: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hostId": h.id, "availabilityZone": h.zone, "state": h.state, "ownerId": call.owner_id,
        "autoPlacement": "off", "hostRecovery": "off", "allocationTime": h.allocated_at,
        "instances": [{"instanceId": instance_ids.get(n, ""), "ownerId": call.owner_id}
                      for n in h.instances],
    }
    if h.released_at is not None:
        body["releaseTime"] = h.released_at
    if h.capacity is not None:
        cap = h.capacity
        body["hostProperties"] = {"cores": cap.vcpus_total, "sockets": 1,
                                  "totalVCpus": cap.vcpus_total, "memory": cap.ram_mib_total}
        body["availableCapacity"] = {"availableVCpus": cap.vcpus_total - cap.vcpus_used}
    return body


def _instance_ids(call: Call) -> dict[str, str]:
    return {i.name: i.id for i in instances.list_all(call.svc, call.who, None)}


@action("AllocateHosts")
def allocate_hosts(call: Call) -> Body:
    """Quantity hosts of the zone, all or none (as MinCount = MaxCount)."""
    p = call.params
    zone = p.req("AvailabilityZone")
    quantity = p.integer("Quantity", low=1, high=MAX_QUANTITY) or 1
    itype = p.text("InstanceType")
    if itype is not None and call.svc.settings.instance_type(itype) is None:
        raise invalid(f"unknown instance type {itype!r}")
    made: list[str] = []
    try:
        for _ in range(quantity):
            made.append(dedicated_hosts.allocate(call.svc, call.who, None, zone).id)
    except CumuloError as e:
        for host_id in made:
            dedicated_hosts.release(call.svc, call.who, None, host_id)
        raise from_cumulo(e, _CODES) from e
    return {"hostIdSet": made}


@action("DescribeHosts")
def describe_hosts(call: Call) -> Body:
    wanted = call.params.items("HostId")
    every = dedicated_hosts.list_all(call.svc, call.who, None)
    ids.require_known(wanted, {h.id for h in every}, "h")
    wanted_filters = filters.parse(call.params, FILTERS)
    names = _instance_ids(call)
    chosen = [_item(call, h, names) for h in every
              if (not wanted or h.id in wanted) and filters.matches(
                  wanted_filters, {"availability-zone": h.zone, "state": h.state}, {})]
    page, token = filters.page(chosen, call.params)
    return {"hostSet": page, "nextToken": token}


@action("ReleaseHosts")
def release_hosts(call: Call) -> Body:
    """Each host released, or said why not (EC2 answers per host, not all or nothing)."""
    done: list[str] = []
    failed: list[dict[str, Any]] = []
    for host_id in call.params.items("HostId"):
        try:
            dedicated_hosts.release(call.svc, call.who, None, host_id)
            done.append(host_id)
        except CumuloError as e:
            failed.append({"resourceId": host_id,
                           "error": {"code": from_cumulo(e, _CODES).code,
                                     "message": e.message}})
    return {"successful": done, "unsuccessful": failed}


def tenancy(call: Call) -> tuple[str | None, str | None]:
    """RunInstances' (tenancy, dedicated host id) for cumulo's create: EC2's `default` is
    shared; `dedicated` and `host` are both cumulo's dedicated tenancy (a host of the
    project's own), `HostId` one host of them."""
    p = call.params
    given = p.text("Placement.Tenancy")
    host_id = p.text("Placement.HostId")
    if given not in (None, "default", "dedicated", "host"):
        raise invalid(f"unknown tenancy {given!r}: default, dedicated or host")
    if host_id is not None and given == "default":
        raise invalid("Placement.HostId needs tenancy host (or none given)")
    if host_id is None and given in (None, "default"):
        return None, None
    return "dedicated", host_id
