"""The wire format between the API and host agents (both sides import this module)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HostRegistration(BaseModel):
    name: str
    zone: str
    architectures: list[str]
    vcpus: int
    ram_mib: int
    driver: str
    accel: str
    agent_url: str = ""


class Registered(BaseModel):
    host_id: str


class ImageRef(BaseModel):
    id: str
    boot: str
    disk_path: str
    kernel_path: str | None
    initrd_path: str | None
    kernel_cmdline: str


class Assignment(BaseModel):
    """One instance the host must converge to `desired_power`."""

    id: str
    hostname: str
    project: str
    arch: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    state: str  # what the API shows now (the agent must not restart a VM shown in error)
    desired_power: str
    generation: int
    reboot_seq: int
    reboot_done_seq: int
    image: ImageRef
    user_data_b64: str | None = None
    ssh_public_keys: list[str] = Field(default_factory=list)


class Assignments(BaseModel):
    version: int  # the notifier version; long-poll again with since=version
    instances: list[Assignment]


class Observation(BaseModel):
    id: str
    state: str  # an InstanceState value, or "deleted"
    reason: str = ""
    generation: int  # the assignment generation this observation answers
    reboot_done_seq: int | None = None
    guest_initiated: bool = False  # the guest powered itself off


class Report(BaseModel):
    observations: list[Observation]
