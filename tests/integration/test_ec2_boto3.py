"""The EC2 API through boto3, against a whole cloud (`cumulo up`, fake driver): one cloud for
the module, a project (and access key) per test."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.conftest import Cloud, _make
from tests.integration.ec2_clients import FAST, Keys, client, new_project


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for c in _make("fake"):
        c.start()
        yield c


@pytest.fixture
def keys(cloud: Cloud) -> Keys:
    return new_project(cloud, "p" + secrets.token_hex(4))


@pytest.fixture
def ec2(cloud: Cloud, keys: Keys) -> Any:
    return client(cloud, keys)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def tiny_ami(ec2: Any, arch: str = "x86_64") -> str:
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]},
                                          {"Name": "architecture", "Values": [arch]}])["Images"]
    assert len(images) == 1, images
    return str(images[0]["ImageId"])


def run_one(ec2: Any, **kw: Any) -> dict[str, Any]:
    args = {"ImageId": tiny_ami(ec2), "InstanceType": "t1.nano", "MinCount": 1, "MaxCount": 1}
    out = ec2.run_instances(**(args | kw))
    assert len(out["Instances"]) == 1
    return dict(out["Instances"][0])


def test_run_describe_wait_and_terminate(ec2: Any) -> None:
    inst = run_one(ec2, TagSpecifications=[{"ResourceType": "instance",
                                            "Tags": [{"Key": "role", "Value": "web"}]}],
                   UserData="#!/bin/sh\necho hello\n")
    iid = inst["InstanceId"]
    assert iid.startswith("i-") and inst["State"] == {"Code": 0, "Name": "pending"}
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    ec2.get_waiter("instance_status_ok").wait(InstanceIds=[iid], WaiterConfig=FAST)
    found = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert found["State"] == {"Code": 16, "Name": "running"}
    assert found["InstanceType"] == "t1.nano" and found["Placement"]["AvailabilityZone"]
    assert found["PrivateIpAddress"].startswith("10.") and found["PublicIpAddress"]
    assert {"Key": "role", "Value": "web"} in found["Tags"]
    by_tag = ec2.describe_instances(Filters=[{"Name": "tag:role", "Values": ["web"]}])
    assert [i["InstanceId"] for r in by_tag["Reservations"] for i in r["Instances"]] == [iid]
    none = ec2.describe_instances(Filters=[{"Name": "tag:role", "Values": ["db"]}])
    assert none["Reservations"] == []
    out = ec2.get_console_output(InstanceId=iid)
    assert out["InstanceId"] == iid and "hostname" in out["Output"]
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=FAST)
    gone = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert gone["State"] == {"Code": 48, "Name": "terminated"}


def test_stop_modify_type_start(ec2: Any) -> None:
    iid = run_one(ec2)["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    with pytest.raises(ClientError) as exc:
        ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t1.micro"})
    assert error_code(exc) == "IncorrectInstanceState"
    with pytest.raises(ClientError) as exc:
        ec2.create_image(InstanceId=iid, Name="img-of-running")
    assert error_code(exc) == "IncorrectInstanceState"
    with pytest.raises(ClientError) as exc:
        ec2.deregister_image(ImageId=tiny_ami(ec2))
    assert error_code(exc) == "InvalidParameterValue"
    stopping = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig=FAST)
    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t1.micro"})
    ec2.start_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    found = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert found["InstanceType"] == "t1.micro"
    ec2.reboot_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)


def test_client_token_makes_run_instances_idempotent(ec2: Any) -> None:
    first = run_one(ec2, ClientToken="tok-1")
    again = run_one(ec2, ClientToken="tok-1")
    assert again["InstanceId"] == first["InstanceId"]
    listed = ec2.describe_instances()["Reservations"]
    assert len(listed) == 1
    with pytest.raises(ClientError) as exc:
        run_one(ec2, ClientToken="tok-1", InstanceType="t1.micro")
    assert error_code(exc) == "IdempotentParameterMismatch"
    assert len(ec2.describe_instances()["Reservations"]) == 1


def test_min_and_max_count_and_pagination(ec2: Any) -> None:
    out = ec2.run_instances(ImageId=tiny_ami(ec2), InstanceType="t1.nano", MinCount=2,
                            MaxCount=3)
    assert len(out["Instances"]) == 3
    page = ec2.describe_instances(MaxResults=5)
    assert len(page["Reservations"]) == 3 and "NextToken" not in page
    seen = []
    paginator = ec2.get_paginator("describe_instances")
    for p in paginator.paginate(PaginationConfig={"PageSize": 5}):
        seen += [i["InstanceId"] for r in p["Reservations"] for i in r["Instances"]]
    assert sorted(seen) == sorted(i["InstanceId"] for i in out["Instances"])
    filtered = ec2.describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": ["pending", "running"]},
        {"Name": "instance-type", "Values": ["t1.*"]},
        {"Name": "availability-zone", "Values": ["local-1a"]}])
    assert len(filtered["Reservations"]) == 3


def test_errors_are_ec2s_and_change_nothing(ec2: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ImageId": "ami-00000000000000000"}, "InvalidAMIID.NotFound"),
        ({"ImageId": "nope"}, "InvalidAMIID.Malformed"),
        ({"InstanceType": "x9.huge"}, "InvalidParameterValue"),
        ({"KeyName": "missing"}, "InvalidKeyPair.NotFound"),
        ({"SecurityGroupIds": ["sg-00000000000000000"]}, "InvalidGroup.NotFound"),
        ({"UserData": "x" * 70000}, "InvalidParameterValue"),
        ({"MinCount": 2, "MaxCount": 1}, "InvalidParameterValue"),
    ]
    base = {"ImageId": tiny_ami(ec2), "InstanceType": "t1.nano", "MinCount": 1, "MaxCount": 1}
    for change, code in cases:
        with pytest.raises(ClientError) as exc:
            ec2.run_instances(**(base | change))
        assert error_code(exc) == code, change
    assert ec2.describe_instances()["Reservations"] == []
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(InstanceIds=["i-00000000000000000"])
    assert error_code(exc) == "InvalidInstanceID.NotFound"
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(InstanceIds=["web-1"])
    assert error_code(exc) == "InvalidInstanceID.Malformed"
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert error_code(exc) == "InvalidParameterValue"
    with pytest.raises(ClientError) as exc:
        ec2.describe_spot_price_history()
    assert error_code(exc) == "UnsupportedOperation"
    assert "DescribeSpotPriceHistory" in exc.value.response["Error"]["Message"]


def test_another_projects_instance_is_not_found(cloud: Cloud, ec2: Any) -> None:
    iid = run_one(ec2)["InstanceId"]
    other = client(cloud, new_project(cloud, "o" + secrets.token_hex(4)))
    calls: tuple[Callable[[], object], ...] = (
        lambda: other.describe_instances(InstanceIds=[iid]),
        lambda: other.terminate_instances(InstanceIds=[iid]),
        lambda: other.get_console_output(InstanceId=iid))
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc) == "InvalidInstanceID.NotFound"
    assert other.describe_instances()["Reservations"] == []
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] in ("pending", "running")


def test_bad_keys_and_signatures(cloud: Cloud, keys: Keys) -> None:
    wrong_secret = Keys(keys.project, keys.access_key_id, keys.secret_access_key[:-1] + "x")
    with pytest.raises(ClientError) as exc:
        client(cloud, wrong_secret, max_attempts=1).describe_instances()
    assert error_code(exc) == "SignatureDoesNotMatch"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = Keys(keys.project, "AKIA" + "Z" * 16, keys.secret_access_key)
    with pytest.raises(ClientError) as exc:
        client(cloud, unknown, max_attempts=1).describe_instances()
    assert error_code(exc) == "AuthFailure"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    with pytest.raises(ClientError) as exc:
        client(cloud, keys, region_name="mars-1", max_attempts=1).describe_instances()
    assert error_code(exc) == "AuthFailure"
    good = client(cloud, keys)
    assert good.describe_instances()["Reservations"] == []
    cloud.cli("project", "access-key", "delete", keys.access_key_id, "--project", keys.project)
    with pytest.raises(ClientError) as exc:
        client(cloud, keys, max_attempts=1).describe_instances()
    assert error_code(exc) == "AuthFailure"


def test_access_key_commands(cloud: Cloud, keys: Keys) -> None:
    listed = cloud.json("project", "access-key", "list", "--project", keys.project)
    assert [k["access_key_id"] for k in listed] == [keys.access_key_id]
    assert "secret_access_key" not in listed[0] or listed[0]["secret_access_key"] is None
    db = (cloud.state_dir / "cumulo.db").read_bytes()
    assert keys.secret_access_key.encode() not in db
    r = cloud.cli("project", "access-key", "delete", "AKIANOSUCHKEY0000000", "--project",
                  keys.project, check=False)
    assert r.returncode != 0 and "unknown_access_key" in r.stderr


def test_catalogue(ec2: Any) -> None:
    assert [r["RegionName"] for r in ec2.describe_regions()["Regions"]] == ["local-1"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    assert zones == ["local-1a", "local-1b"]
    types = ec2.describe_instance_types(InstanceTypes=["t1.nano"])["InstanceTypes"]
    assert types[0]["VCpuInfo"]["DefaultVCpus"] == 1
    assert types[0]["MemoryInfo"]["SizeInMiB"] == 128
    assert (types[0]["BareMetal"], types[0]["Hypervisor"]) == (False, "xen")
    metal = ec2.describe_instance_types(InstanceTypes=["bm1.tiny"])["InstanceTypes"][0]
    assert metal["BareMetal"] is True and "Hypervisor" not in metal
    arm = tiny_ami(ec2, "arm64")
    image = ec2.describe_images(ImageIds=[arm])["Images"][0]
    assert image["Architecture"] == "arm64" and image["State"] == "available"
    ec2.get_waiter("image_available").wait(ImageIds=[arm], WaiterConfig=FAST)
    attrs = ec2.describe_account_attributes()["AccountAttributes"]
    assert {a["AttributeName"] for a in attrs} >= {"supported-platforms", "default-vpc"}


def test_key_pairs(ec2: Any) -> None:
    made = ec2.create_key_pair(KeyName="k1")
    assert "OPENSSH PRIVATE KEY" in made["KeyMaterial"]
    with pytest.raises(ClientError) as exc:
        ec2.create_key_pair(KeyName="k1")
    assert error_code(exc) == "InvalidKeyPair.Duplicate"
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEz0l3mO0dGWJmI3FtO4kS5o0y0c6RCm2hvVcWV0n0Nd"
    ec2.import_key_pair(KeyName="k2", PublicKeyMaterial=public.encode())
    names = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    assert names == ["k1", "k2"]
    with pytest.raises(ClientError) as exc:
        ec2.describe_key_pairs(KeyNames=["k3"])
    assert error_code(exc) == "InvalidKeyPair.NotFound"
    inst = run_one(ec2, KeyName="k2")
    assert inst["KeyName"] == "k2"
    ec2.delete_key_pair(KeyName="k1")
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["k2"]


def test_security_groups(ec2: Any) -> None:
    gid = ec2.create_security_group(GroupName="web", Description="web servers")["GroupId"]
    with pytest.raises(ClientError) as exc:
        ec2.create_security_group(GroupName="web", Description="again")
    assert error_code(exc) == "InvalidGroup.Duplicate"
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    with pytest.raises(ClientError) as exc:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1000,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert error_code(exc) == "InvalidParameterValue"
    group = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    assert group["GroupName"] == "web"
    assert [(p["IpProtocol"], p["FromPort"]) for p in group["IpPermissions"]] == [("tcp", 80)]
    iid = run_one(ec2, SecurityGroupIds=[gid])["InstanceId"]
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [gid]
    with pytest.raises(ClientError) as exc:
        ec2.delete_security_group(GroupId=gid)
    assert error_code(exc) == "DependencyViolation"
    ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0][
        "IpPermissions"] == []
    with pytest.raises(ClientError) as exc:
        ec2.describe_security_groups(GroupIds=["sg-00000000000000000"])
    assert error_code(exc) == "InvalidGroup.NotFound"


def test_user_data_is_base64_through_boto3(ec2: Any) -> None:
    # boto3 encodes UserData itself: what reaches the instance is the script, not its base64.
    script = "#!/bin/sh\necho from-user-data\n"
    iid = run_one(ec2, UserData=script)["InstanceId"]
    assert base64.b64encode(script.encode())  # (boto3 sent this)
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)


def test_volumes_snapshots_and_their_waiters(ec2: Any) -> None:
    iid = run_one(ec2)["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    vol = ec2.create_volume(Size=1, AvailabilityZone="local-1a", ClientToken="v-1",
                            TagSpecifications=[{"ResourceType": "volume",
                                                "Tags": [{"Key": "use", "Value": "data"}]}])
    again = ec2.create_volume(Size=1, AvailabilityZone="local-1a", ClientToken="v-1",
                              TagSpecifications=[{"ResourceType": "volume",
                                                  "Tags": [{"Key": "use", "Value": "data"}]}])
    assert again["VolumeId"] == vol["VolumeId"]
    with pytest.raises(ClientError) as exc:
        ec2.create_volume(Size=2, AvailabilityZone="local-1a", ClientToken="v-1")
    assert error_code(exc) == "IdempotentParameterMismatch"
    vid = vol["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=FAST)
    ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig=FAST)
    described = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert described["Attachments"][0]["InstanceId"] == iid
    assert {"Key": "use", "Value": "data"} in described["Tags"]
    with pytest.raises(ClientError) as exc:
        ec2.delete_volume(VolumeId=vid)
    assert error_code(exc) == "VolumeInUse"
    snap = ec2.create_snapshot(VolumeId=vid, Description="backup")
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap["SnapshotId"]],
                                              WaiterConfig=FAST)
    assert ec2.describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"][0][
        "VolumeId"] == vid
    ec2.detach_volume(VolumeId=vid)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=FAST)
    ec2.modify_volume(VolumeId=vid, Size=2)
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Size"] == 2
    by_filter = ec2.describe_volumes(Filters=[{"Name": "tag:use", "Values": ["data"]}])
    assert [v["VolumeId"] for v in by_filter["Volumes"]] == [vid]
    ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
    ec2.delete_volume(VolumeId=vid)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[vid], WaiterConfig=FAST)
    with pytest.raises(ClientError) as exc:
        ec2.describe_volumes(VolumeIds=["vol-00000000000000000"])
    assert error_code(exc) == "InvalidVolume.NotFound"


def test_addresses(ec2: Any) -> None:
    iid = run_one(ec2)["InstanceId"]
    alloc = ec2.allocate_address(Domain="vpc")
    assert alloc["AllocationId"].startswith("eipalloc-")
    assoc = ec2.associate_address(AllocationId=alloc["AllocationId"], InstanceId=iid)
    addr = ec2.describe_addresses(AllocationIds=[alloc["AllocationId"]])["Addresses"][0]
    assert addr["InstanceId"] == iid and addr["PublicIp"] == alloc["PublicIp"]
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["PublicIpAddress"] == alloc["PublicIp"]
    with pytest.raises(ClientError) as exc:
        ec2.release_address(AllocationId=alloc["AllocationId"])
    assert error_code(exc) == "InvalidIPAddress.InUse"
    ec2.disassociate_address(AssociationId=assoc["AssociationId"])
    ec2.release_address(AllocationId=alloc["AllocationId"])
    assert ec2.describe_addresses()["Addresses"] == []


def test_tags_vpcs_and_subnets(ec2: Any) -> None:
    iid = run_one(ec2)["InstanceId"]
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "env", "Value": "prod"},
                                           {"Key": "team", "Value": "a"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"]
    assert {(t["Key"], t["Value"]) for t in tags} == {("env", "prod"), ("team", "a")}
    ec2.delete_tags(Resources=[iid], Tags=[{"Key": "team"}])
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["Tags"] == [{"Key": "env", "Value": "prod"}]
    with pytest.raises(ClientError) as exc:
        ec2.create_tags(Resources=["i-00000000000000000"], Tags=[{"Key": "a", "Value": "b"}])
    assert error_code(exc) == "InvalidInstanceID.NotFound"
    vpcs = ec2.describe_vpcs()["Vpcs"]
    assert len(vpcs) == 1 and vpcs[0]["IsDefault"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id",
                                             "Values": [vpcs[0]["VpcId"]]}])["Subnets"]
    # A default subnet in every zone of the region, as EC2 clients expect.
    assert sorted((s["AvailabilityZone"], s["DefaultForAz"]) for s in subnets) == \
        [("local-1a", True), ("local-1b", True)]
    subnets = ec2.describe_subnets(Filters=[{"Name": "availability-zone",
                                             "Values": ["local-1a"]}])["Subnets"]
    assert [s["SubnetId"] for s in subnets] == [inst["SubnetId"]]
    second = run_one(ec2, SubnetId=subnets[0]["SubnetId"])
    assert second["SubnetId"] == subnets[0]["SubnetId"]


def test_other_projects_volumes_groups_and_addresses_are_not_found(cloud: Cloud,
                                                                   ec2: Any) -> None:
    vid = ec2.create_volume(Size=1, AvailabilityZone="local-1a")["VolumeId"]
    gid = ec2.create_security_group(GroupName="mine", Description="x")["GroupId"]
    alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
    other = client(cloud, new_project(cloud, "o" + secrets.token_hex(4)))
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: other.describe_volumes(VolumeIds=[vid]), "InvalidVolume.NotFound"),
        (lambda: other.delete_volume(VolumeId=vid), "InvalidVolume.NotFound"),
        (lambda: other.create_snapshot(VolumeId=vid), "InvalidVolume.NotFound"),
        (lambda: other.describe_security_groups(GroupIds=[gid]), "InvalidGroup.NotFound"),
        (lambda: other.delete_security_group(GroupId=gid), "InvalidGroup.NotFound"),
        (lambda: other.release_address(AllocationId=alloc), "InvalidAllocationID.NotFound"),
        (lambda: other.create_tags(Resources=[vid], Tags=[{"Key": "a", "Value": "b"}]),
         "InvalidVolume.NotFound"),
    ]
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc) == code
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0].get("Tags", []) == []
    assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert ec2.describe_addresses(AllocationIds=[alloc])["Addresses"]
