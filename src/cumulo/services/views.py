"""What the API returns: one pydantic model per resource (also the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ProjectView(BaseModel):
    id: str
    name: str
    created_at: datetime


class Caller(BaseModel):
    """Who a token is: an admin (every project, the hosts) or a member of one project."""

    role: str
    project: str | None


class InstanceView(BaseModel):
    id: str
    name: str
    project: str
    state: str
    state_reason: str
    desired_state: str
    region: str
    zone: str
    arch: str
    type: str | None
    vcpus: int
    ram_mib: int
    bandwidth_mbps: int
    disk_gib: int
    image: str
    image_id: str  # of the variant (architecture) it was created from
    host: str | None  # admins only (None for members): users see the zone
    placement_group: str | None
    tenancy: str = "shared"  # or "dedicated": on a host dedicated to its project
    dedicated_host: str | None = None  # the id of the dedicated host it runs on
    network: str | None
    private_ip: str | None
    public_ip: str | None
    fqdn: str
    key_names: list[str]
    security_groups: list[str]
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime


class InstanceTypeView(BaseModel):
    name: str
    vcpus: int
    ram_mib: int
    bandwidth_mbps: int
    disk_gib: int
    architectures: list[str]
    baremetal: bool = False  # a whole physical server (bm1.*), not a VM


class ImageVariantView(BaseModel):
    id: str
    arch: str
    boot: str
    virtual_size_bytes: int
    min_ram_mib: int
    state: str


class ImageView(BaseModel):
    name: str
    project: str | None  # None: public
    os: str
    default_user: str
    architectures: list[str]
    variants: list[ImageVariantView]


class DedicatedHostCapacity(BaseModel):
    """What a dedicated host holds (no overcommit: one host CPU per vCPU)."""

    vcpus_total: int
    vcpus_used: int
    ram_mib_total: int
    ram_mib_used: int


class DedicatedHostView(BaseModel):
    """A host reserved for one project (EC2's Dedicated Host)."""

    id: str
    zone: str
    host: str | None  # the hypervisor host's name: admins only (members see the id)
    project: str
    state: str  # available | released
    instances: list[str]  # names of the instances on it
    capacity: DedicatedHostCapacity | None  # None once released
    allocated_at: datetime
    released_at: datetime | None


class HostView(BaseModel):
    """A hypervisor host as its agent registered it, and what placement made of it."""

    name: str
    zone: str
    state: str  # up | down | disabled (an operator's; it may be down too: see `alive`)
    alive: bool  # its agent spoke within hosts.HOST_DOWN_AFTER
    disabled_reason: str
    driver: str
    accel: str
    architectures: list[str]
    vcpus_total: int  # as registered
    ram_mib_total: int
    vcpus_allocatable: int  # under the allocation ratios
    ram_mib_allocatable: int
    vcpus_used: int
    ram_mib_used: int
    # The state dir's filesystem as last reported, and what placement may still claim of it
    # (None: the host does not report disk space).
    disk_total_mib: int | None = None
    disk_free_mib: int | None = None
    disk_room_mib: int | None = None
    instances: int
    underlay_ip: str | None
    agent_version: str
    last_heartbeat_at: datetime


class ZoneView(BaseModel):
    name: str
    region: str
    hosts: list[HostView]
    vcpus_free: int
    ram_mib_free: int


class PlacementGroupView(BaseModel):
    id: str
    name: str
    project: str
    strategy: str  # spread | cluster
    instances: list[str]  # instance names
    created_at: datetime


class CreatedToken(BaseModel):
    token: str


class NetworkView(BaseModel):
    id: str
    name: str
    project: str
    zone: str
    cidr: str
    gateway: str
    is_default: bool
    instances: int
    created_at: datetime


class KeyPairView(BaseModel):
    name: str
    fingerprint: str
    public_key: str
    created_at: datetime
    private_key: str | None = None  # only in the answer to `create`, never stored


class SecurityRuleView(BaseModel):
    id: str
    proto: str
    port: int | None
    cidr: str


class SecurityGroupView(BaseModel):
    id: str
    name: str
    project: str
    description: str
    rules: list[SecurityRuleView]
    instances: int


class PublicIpView(BaseModel):
    id: str
    ip: str
    project: str
    instance: str | None  # instance name
    auto: bool
    created_at: datetime


class VolumeView(BaseModel):
    id: str
    name: str
    project: str
    zone: str
    size_gib: int
    type: str
    iops: int
    mbps: int
    write_error: str  # stop (a write the host cannot do pauses the VM) | report (EIO)
    state: str
    state_reason: str
    attached_to: str | None  # instance name
    device: str | None  # expected guest device name (e.g. vdc)
    delete_on_termination: bool
    source_snapshot: str | None
    created_at: datetime


class SnapshotView(BaseModel):
    id: str
    name: str
    project: str
    zone: str
    volume: str | None  # source volume name, None once deleted
    size_gib: int
    state: str
    state_reason: str
    created_at: datetime


class QuotaLine(BaseModel):
    resource: str  # the key `cumulo project quota set` takes
    used: int
    limit: int | None  # None: unlimited
    default: bool  # the configuration's default (no limit of the project's own)


class QuotaView(BaseModel):
    project: str
    quotas: list[QuotaLine]


class EventView(BaseModel):
    id: int
    at: datetime
    project: str | None  # None: the operator's (a host's)
    resource_type: str
    resource_id: str
    resource_name: str
    kind: str
    actor: str
    detail: str
