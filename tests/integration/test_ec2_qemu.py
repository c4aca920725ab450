"""The EC2 API over a real VM (TCG): boto3 and the aws CLI take an instance from
RunInstances to SSH (at its public IP, a loopback address) to termination."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Cloud, qemu_pids
from tests.integration.ec2_clients import aws, client, new_project

pytestmark = pytest.mark.qemu

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]
WAIT = {"Delay": 2, "MaxAttempts": 150}


def ssh(key: Path, ip: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", *SSH_OPTS, "-i", str(key), f"cumulo@{ip}", *command],
                          capture_output=True, text=True, timeout=60)


def wait_ssh(key: Path, ip: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = ssh(key, ip, "hostname")
        if last.returncode == 0:
            return last.stdout.strip()
        time.sleep(2)
    raise AssertionError(f"no SSH to {ip}: {last.stderr if last else ''}")


def test_boto3_and_aws_cli_drive_a_real_vm(qemu_cloud: Cloud, tmp_path: Path) -> None:
    keys = new_project(qemu_cloud, "ec2vm")
    ec2 = client(qemu_cloud, keys)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ec2.import_key_pair(KeyName="mine", PublicKeyMaterial=key.with_suffix(".pub").read_bytes())
    ami = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]},
                                       {"Name": "architecture", "Values": ["x86_64"]}]
                              )["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, InstanceType="t1.nano", MinCount=1, MaxCount=1,
                             KeyName="mine", UserData="#!/bin/sh\necho ec2-user-data-ran\n",
                             ClientToken="vm-1")["Instances"][0]
    iid = inst["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    ec2.get_waiter("instance_status_ok").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    found = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    ip = found["PublicIpAddress"]
    assert ip.startswith("127.") and found["KeyName"] == "mine"
    hostname = wait_ssh(key, ip)
    assert hostname == found["PrivateDnsName"].split(".")[0]
    assert ssh(key, ip, "cat", "/proc/meminfo").stdout.startswith("MemTotal")
    console = ""
    deadline = time.monotonic() + 120
    while "ec2-user-data-ran" not in console and time.monotonic() < deadline:
        # The API sends base64, as EC2 does; botocore decodes it (so a plain text would fail).
        console = ec2.get_console_output(InstanceId=iid)["Output"]
        time.sleep(1)
    assert "ec2-user-data-ran" in console

    # The aws CLI: stop, start (SSH again), terminate; boto3's waiter sees it terminated.
    aws(qemu_cloud, keys, "stop-instances", "--instance-ids", iid)
    aws(qemu_cloud, keys, "wait", "instance-stopped", "--instance-ids", iid)
    assert qemu_pids(qemu_cloud.state_dir) == {}
    image = ec2.create_image(InstanceId=iid, Name="snap-of-vm")["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[image], WaiterConfig=WAIT)
    assert ec2.describe_images(ImageIds=[image])["Images"][0]["Name"] == "snap-of-vm"
    ec2.deregister_image(ImageId=image)
    assert ec2.describe_images(Filters=[{"Name": "name", "Values": ["snap-of-vm"]}]
                               )["Images"] == []
    aws(qemu_cloud, keys, "start-instances", "--instance-ids", iid)
    aws(qemu_cloud, keys, "wait", "instance-running", "--instance-ids", iid)
    state = json.loads(aws(qemu_cloud, keys, "describe-instances", "--instance-ids", iid
                           ).stdout)["Reservations"][0]["Instances"][0]
    assert wait_ssh(key, state["PublicIpAddress"]) == hostname
    aws(qemu_cloud, keys, "terminate-instances", "--instance-ids", iid)
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    assert qemu_pids(qemu_cloud.state_dir) == {}
    assert ssh(key, ip, "true").returncode != 0
