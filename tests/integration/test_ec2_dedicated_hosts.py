"""EC2's Dedicated Hosts through boto3 (AllocateHosts, DescribeHosts, ReleaseHosts, and
RunInstances with Placement.Tenancy/HostId) on cumulo's dedicated hosts: three fake hosts,
two of them in local-1a."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.conftest import Cloud, _make
from tests.integration.ec2_clients import FAST, client, new_project
from tests.integration.test_ec2_boto3 import error_code, run_one


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for c in _make("fake", ["--hosts", "3"]):
        c.start()
        yield c


def _project(cloud: Cloud, hosts: int) -> Any:
    keys = new_project(cloud, "p" + secrets.token_hex(4))
    cloud.cli("project", "quota", "set", keys.project, f"dedicated_hosts={hosts}")
    return client(cloud, keys)


def test_allocate_run_on_describe_and_release(cloud: Cloud) -> None:
    ec2 = _project(cloud, hosts=1)
    (host_id,) = ec2.allocate_hosts(AvailabilityZone="local-1a", Quantity=1)["HostIds"]
    assert host_id.startswith("h-")
    (shown,) = ec2.describe_hosts(HostIds=[host_id])["Hosts"]
    assert (shown["State"], shown["AvailabilityZone"], shown["Instances"]) == (
        "available", "local-1a", [])
    total = shown["HostProperties"]["TotalVCpus"]
    assert shown["AvailableCapacity"]["AvailableVCpus"] == total > 0

    inst = run_one(ec2, Placement={"Tenancy": "host", "HostId": host_id})
    iid = inst["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    placed = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert placed["Placement"] == {"AvailabilityZone": "local-1a", "GroupName": "",
                                   "Tenancy": "host", "HostId": host_id}
    (shown,) = ec2.describe_hosts(HostIds=[host_id])["Hosts"]
    assert [i["InstanceId"] for i in shown["Instances"]] == [iid]
    assert shown["AvailableCapacity"]["AvailableVCpus"] == total - 1
    # A shared (default) instance never lands on it.
    shared = run_one(ec2)
    shown_shared = ec2.describe_instances(InstanceIds=[shared["InstanceId"]])
    assert "HostId" not in shown_shared["Reservations"][0]["Instances"][0]["Placement"]

    # Released only once empty; EC2 answers per host.
    out = ec2.release_hosts(HostIds=[host_id])
    assert out["Successful"] == [] and out["Unsuccessful"][0]["ResourceId"] == host_id
    assert out["Unsuccessful"][0]["Error"]["Code"] == "IncorrectHostState"
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=FAST)
    assert ec2.release_hosts(HostIds=[host_id])["Successful"] == [host_id]
    (gone,) = ec2.describe_hosts(HostIds=[host_id])["Hosts"]
    assert gone["State"] == "released"


def test_refusals_are_ec2s_and_change_nothing(cloud: Cloud) -> None:
    ec2 = _project(cloud, hosts=0)
    with pytest.raises(ClientError) as e:  # the project's quota is 0
        ec2.allocate_hosts(AvailabilityZone="local-1a", Quantity=1)
    assert error_code(e) == "HostLimitExceeded"
    ec2 = _project(cloud, hosts=1)
    with pytest.raises(ClientError) as e:  # all or nothing
        ec2.allocate_hosts(AvailabilityZone="local-1a", Quantity=2)
    assert error_code(e) == "HostLimitExceeded"
    assert [h["State"] for h in ec2.describe_hosts()["Hosts"]] == ["released"]
    with pytest.raises(ClientError) as e:
        ec2.describe_hosts(HostIds=["h-0123456789abcdef0"])
    assert error_code(e) == "InvalidHostID.NotFound"
    with pytest.raises(ClientError) as e:
        ec2.describe_hosts(HostIds=["host-1"])
    assert error_code(e) == "InvalidHostID.Malformed"
    with pytest.raises(ClientError) as e:  # dedicated tenancy with no host of its own
        run_one(ec2, Placement={"Tenancy": "host"})
    assert ec2.describe_instances()["Reservations"] == []
    with pytest.raises(ClientError) as e:
        run_one(ec2, Placement={"Tenancy": "sideways"})
    assert error_code(e) == "InvalidParameterValue"
