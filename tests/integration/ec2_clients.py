"""EC2 clients (boto3, the aws CLI) pointed at a test cloud, with a project's access key."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from tests.integration.conftest import Cloud

REGION = "local-1"
FAST = {"Delay": 1, "MaxAttempts": 120}  # waiter settings: the fake driver is quick


@dataclass
class Keys:
    project: str
    access_key_id: str
    secret_access_key: str


def new_project(cloud: Cloud, name: str) -> Keys:
    cloud.cli("project", "create", name)
    key = cloud.json("project", "access-key", "create", "--project", name)
    assert key["project"] == name
    return Keys(name, key["access_key_id"], key["secret_access_key"])


def client(cloud: Cloud, keys: Keys, **kw: Any) -> Any:
    return boto3.client(
        "ec2", endpoint_url=f"http://127.0.0.1:{cloud.port}", region_name=kw.pop(
            "region_name", REGION),
        aws_access_key_id=keys.access_key_id, aws_secret_access_key=keys.secret_access_key,
        config=Config(retries={"max_attempts": kw.pop("max_attempts", 2), "mode": "standard"}),
        **kw)


def aws_env(keys: Keys) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=keys.access_key_id, AWS_SECRET_ACCESS_KEY=keys.secret_access_key,
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
    return env


def aws(cloud: Cloud, keys: Keys, *args: str, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """The aws CLI (the awscli package's entry point, run by this interpreter)."""
    cmd = [sys.executable, "-m", "awscli", "--endpoint-url", f"http://127.0.0.1:{cloud.port}",
           "--output", "json", "ec2", *args]
    r = subprocess.run(cmd, env=aws_env(keys), capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"aws ec2 {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r
