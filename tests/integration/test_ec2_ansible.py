"""Ansible's amazon.aws modules (ec2_key, ec2_security_group, ec2_ami_info, ec2_instance,
ec2_vol) against the EC2 API, on a real VM that it SSHes into. (The same playbook on the fake
driver, without the SSH, checked nothing more and cost 45 s of the suite: removed.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.ansible_run import run_playbook
from tests.integration.conftest import Cloud, qemu_pids
from tests.integration.ec2_clients import client, new_project


def _check(cloud: Cloud, tmp_path: Path, *, ssh: bool) -> dict[str, str]:
    keys = new_project(cloud, "ansible")
    out = run_playbook(cloud.port, keys, tmp_path, ssh=ssh)
    ec2 = client(cloud, keys)
    inst = ec2.describe_instances(InstanceIds=[out["instance"]])["Reservations"][0][
        "Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    assert {"Key": "Name", "Value": "ansible-vm"} in inst["Tags"]
    group = ec2.describe_security_groups(GroupIds=[out["group"]])["SecurityGroups"][0]
    assert [(p["IpProtocol"], p["FromPort"]) for p in group["IpPermissions"]] == [("tcp", 22)]
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["ansible-key"]
    # The volume was attached; the instance's termination detached it (it stays, as in EC2).
    volume = ec2.describe_volumes(VolumeIds=[out["volume"]])["Volumes"][0]
    assert volume["Size"] == 1 and volume["State"] in ("available", "in-use")
    return out


@pytest.mark.qemu
def test_ansible_playbook_creates_a_vm_and_sshes_into_it(qemu_cloud: Cloud,
                                                          tmp_path: Path) -> None:
    out = _check(qemu_cloud, tmp_path, ssh=True)
    assert out["hostname"].startswith("ec2-")
    assert qemu_pids(qemu_cloud.state_dir) == {}
