"""The aws CLI's `ec2` commands against a fake-driver cloud: run, wait, describe, stop,
terminate, and a bad request's error."""

from __future__ import annotations

import json
import secrets

from tests.integration.conftest import Cloud
from tests.integration.ec2_clients import aws, new_project


def test_aws_cli_drives_an_instance(fake_cloud: Cloud) -> None:
    keys = new_project(fake_cloud, "cli" + secrets.token_hex(3))
    images = json.loads(aws(fake_cloud, keys, "describe-images", "--filters",
                            "Name=name,Values=tiny", "Name=architecture,Values=x86_64").stdout)
    ami = images["Images"][0]["ImageId"]
    run = json.loads(aws(fake_cloud, keys, "run-instances", "--image-id", ami,
                         "--instance-type", "t1.nano", "--count", "1",
                         "--tag-specifications",
                         "ResourceType=instance,Tags=[{Key=Name,Value=cli}]").stdout)
    iid = run["Instances"][0]["InstanceId"]
    aws(fake_cloud, keys, "wait", "instance-running", "--instance-ids", iid)
    found = json.loads(aws(fake_cloud, keys, "describe-instances", "--filters",
                           "Name=tag:Name,Values=cli").stdout)
    assert found["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
    aws(fake_cloud, keys, "stop-instances", "--instance-ids", iid)
    aws(fake_cloud, keys, "wait", "instance-stopped", "--instance-ids", iid)
    aws(fake_cloud, keys, "terminate-instances", "--instance-ids", iid)
    aws(fake_cloud, keys, "wait", "instance-terminated", "--instance-ids", iid)
    bad = aws(fake_cloud, keys, "run-instances", "--image-id", ami, "--instance-type",
              "x9.huge", check=False)
    assert bad.returncode != 0 and "InvalidParameterValue" in bad.stderr
    missing = aws(fake_cloud, keys, "describe-instances", "--instance-ids",
                  "i-00000000000000000", check=False)
    assert missing.returncode != 0 and "InvalidInstanceID.NotFound" in missing.stderr
    listed = json.loads(aws(fake_cloud, keys, "describe-instances").stdout)
    assert [i["State"]["Name"] for r in listed["Reservations"] for i in r["Instances"]] == \
        ["terminated"]
