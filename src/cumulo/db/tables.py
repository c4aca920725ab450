"""SQLAlchemy 2 tables. Persistence only: rules live in domain/ and services/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from cumulo.domain.validation import DEFAULT_MIN_RAM_MIB


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware (UTC). SQLite stores no timezone,
    so without this the API would show naive times on SQLite and aware ones on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[str]: JSON}


class ProjectRow(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # Limits set for this project (key -> number, or None: unlimited); a key not here takes
    # the configuration's default (cumulo.services.quotas). Read with the row: no query more.
    quotas: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TokenRow(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | member | agent | edge
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    host_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class JoinTokenRow(Base):
    """A one-time token with which a new hypervisor host joins the cloud (its agent trades it
    for a host token of its own). Only its SHA-256 is stored."""

    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    zone: Mapped[str | None] = mapped_column(String(63), nullable=True)  # NULL: any zone
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(63), nullable=True)  # the host's name
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class HostRow(Base):
    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    zone: Mapped[str] = mapped_column(String(63), index=True)
    architectures: Mapped[list[str]] = mapped_column(JSON)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mib: Mapped[int] = mapped_column(Integer)
    driver: Mapped[str] = mapped_column(String(16))
    accel: Mapped[str] = mapped_column(String(8), default="")
    agent_url: Mapped[str] = mapped_column(String(300), default="")
    state: Mapped[str] = mapped_column(String(16), default="up")
    # The filesystem of the host's state dir (overlays, volumes), as its agent last reported
    # it; None: not reported (placement then does not check disk space on this host).
    disk_total_mib: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disk_free_mib: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The host's address on the underlay (its VXLAN endpoint), as its agent registered it;
    # None: a host without one (a single all-in-one host), which serves no segment.
    underlay_ip: Mapped[str | None] = mapped_column(String(39), nullable=True)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # An operator's: a disabled host gets no new instance and keeps the ones it has.
    disabled: Mapped[bool] = mapped_column(default=False, server_default=false())
    disabled_reason: Mapped[str] = mapped_column(String(200), default="", server_default="")
    agent_version: Mapped[str] = mapped_column(String(32), default="", server_default="")
    # The machine's CPU ids its agent may pin vCPUs to (see protocol.HostRegistration.cpus):
    # a dedicated host pins each vCPU to one of these. None: not reported.
    cpus: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # `storage = true` in its agent config: the zone's new volumes go to such hosts.
    storage: Mapped[bool] = mapped_column(default=False, server_default=false())


class DedicatedHostRow(Base):
    """A hypervisor host reserved for one project (EC2's Dedicated Host): while "available",
    placement puts nothing of another project, and no shared-tenancy instance, on it. A
    released one is kept for the record."""

    __tablename__ = "dedicated_hosts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"), index=True)
    zone: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))  # "available" | "released"
    # host_id while available, None once released: unique, so that a host is dedicated to
    # one project at most (NULLs do not collide, in SQLite and PostgreSQL alike).
    allocated_host_id: Mapped[str | None] = mapped_column(String(32), nullable=True,
                                                          unique=True)
    allocated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class PlacementGroupRow(Base):
    """Instances of one project placed together (cluster) or apart (spread)."""

    __tablename__ = "placement_groups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_placement_group_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    strategy: Mapped[str] = mapped_column(String(16))  # spread | cluster
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ImageRow(Base):
    """One architecture variant of an image; variants share a name."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "name", "arch", name="uq_image_variant"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )  # NULL: public image
    arch: Mapped[str] = mapped_column(String(16))
    boot: Mapped[str] = mapped_column(String(16))  # kernel | bios | uefi
    default_user: Mapped[str] = mapped_column(String(32))
    os: Mapped[str] = mapped_column(String(200), default="")
    disk_path: Mapped[str] = mapped_column(Text)
    kernel_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    initrd_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    kernel_cmdline: Mapped[str] = mapped_column(Text, default="")
    # Size and sha256 of each file (the paths above are the API machine's own and never leave
    # it): hosts fetch the files by image id over HTTP and check them against these.
    disk_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    disk_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    kernel_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    kernel_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    initrd_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    initrd_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    virtual_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The least RAM an instance of this image may have (the API refuses less).
    min_ram_mib: Mapped[int] = mapped_column(Integer, default=DEFAULT_MIN_RAM_MIB,
                                             server_default=str(DEFAULT_MIN_RAM_MIB))
    state: Mapped[str] = mapped_column(String(16), default="available")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class InstanceRow(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_instance_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    zone: Mapped[str] = mapped_column(String(63))
    arch: Mapped[str] = mapped_column(String(16))
    type_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mib: Mapped[int] = mapped_column(Integer)
    bandwidth_mbps: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    # What placement counted on its host's disk: the image plus the disk's share under the
    # disk_allocation_ratio (see cumulo.scheduler.placement.disk_claim_mib).
    disk_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    image_name: Mapped[str] = mapped_column(String(63))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True, index=True)
    placement_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("placement_groups.id"), nullable=True, index=True)
    # "shared", or "dedicated": only on hosts dedicated to its project (DedicatedHostRow).
    tenancy: Mapped[str] = mapped_column(String(16), default="shared", server_default="shared")
    # The host CPUs its vCPUs are pinned to, one each (on a dedicated host; None elsewhere).
    cpu_set: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    desired_power: Mapped[str] = mapped_column(String(16))
    # Bumped on every user action; agent reports carry the generation they acted on, so a
    # report made before the agent saw the newest request cannot overwrite it.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    reboot_seq: Mapped[int] = mapped_column(Integer, default=0)
    reboot_done_seq: Mapped[int] = mapped_column(Integer, default=0)
    user_data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Public keys copied at create (like EC2): deleting a key pair later changes no instance.
    ssh_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    key_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), default=utcnow, onupdate=utcnow
    )


class NetworkRow(Base):
    """A private network of one project in one zone (a bridge + dnsmasq on each host)."""

    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("project_id", "zone", "name", name="uq_network_name"),
                      UniqueConstraint("vni", name="uq_network_vni"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    zone: Mapped[str] = mapped_column(String(63))
    cidr: Mapped[str] = mapped_column(String(43), unique=True)
    gateway: Mapped[str] = mapped_column(String(39))
    is_default: Mapped[bool] = mapped_column(default=False)
    # The VXLAN segment that carries the network between hosts (its VNI, unique in the cloud).
    vni: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class AddressRow(Base):
    """A private address (and the NIC's MAC) held by one instance on one network."""

    __tablename__ = "addresses"
    __table_args__ = (UniqueConstraint("network_id", "ip", name="uq_address_ip"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    ip: Mapped[str] = mapped_column(String(39))
    mac: Mapped[str] = mapped_column(String(17), unique=True)


class PublicIpRow(Base):
    __tablename__ = "public_ips"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ip: Mapped[str] = mapped_column(String(39), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    instance_id: Mapped[str | None] = mapped_column(
        ForeignKey("instances.id"), nullable=True, unique=True
    )
    auto: Mapped[bool] = mapped_column(default=False)  # given at create, released at delete
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class AddressCursorRow(Base):
    """Per address range, the address after the last one handed out: kept in the database so
    that a freed address comes back only after the rest of its range, across restarts too."""

    __tablename__ = "address_cursors"
    range_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    next_address: Mapped[int] = mapped_column(BigInteger)


class KeyPairRow(Base):
    __tablename__ = "keypairs"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_keypair_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class SecurityGroupRow(Base):
    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_security_group_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class SecurityRuleRow(Base):
    __tablename__ = "security_rules"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True
    )
    proto: Mapped[str] = mapped_column(String(8))
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cidr: Mapped[str] = mapped_column(String(43))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class InstanceGroupRow(Base):
    __tablename__ = "instance_security_groups"
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"), primary_key=True)


class VolumeRow(Base):
    """A block volume. Its file lives on one host of its zone (`host_id`)."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_volume_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    zone: Mapped[str] = mapped_column(String(63))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True, index=True)
    size_gib: Mapped[int] = mapped_column(Integer)
    type_name: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    desired: Mapped[str] = mapped_column(String(16), default="present")  # present | deleted
    # The attachment the user asked for; `attached_to` is what the agent confirmed.
    want_instance_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attached_to: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    delete_on_termination: Mapped[bool] = mapped_column(default=False)
    source_snapshot_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # Attached to an instance of another host: that host (`client_host_id`) opens the NBD
    # export the storage host (`host_id`) serves on `export_port` as `export_name` with the
    # TLS-PSK key `export_key`. Made at the attach, cleared once the client let go.
    client_host_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    export_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    export_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    export_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), default=utcnow, onupdate=utcnow
    )


class SnapshotRow(Base):
    """A point-in-time copy of a volume (crash-consistent when taken while attached)."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_snapshot_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    volume_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # may be deleted
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True,
                                                index=True)
    zone: Mapped[str] = mapped_column(String(63))
    size_gib: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # creating | available | error | deleting
    state_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EventRow(Base):
    """Something that happened to a resource (cumulo.services.events): written where the
    state transition is recorded, read per project, resource or time."""

    __tablename__ = "events"
    # SQLite makes only an INTEGER PRIMARY KEY its rowid (autoincrementing).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    # NULL: the operator's (a host's events); no foreign key: events outlive what they tell of
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    resource_type: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    resource_name: Mapped[str] = mapped_column(String(63), default="")
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(16), default="user")  # user|guest|agent|system|admin
    detail: Mapped[str] = mapped_column(Text, default="")


class ImageExportRow(Base):
    """`image create-from-instance`: a job for the instance's host agent, which exports the
    stopped instance's disk and uploads it to the image store (the API never opens a host's
    files). state: pending | done | failed."""

    __tablename__ = "image_exports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))  # the new image's
    state: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(64), default="", server_default="")  # failed: why
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    image_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
class AccessKeyRow(Base):
    """An EC2 access key of one project. The secret is kept encrypted with the server's key
    (SigV4 needs the secret itself to check a signature, so a hash would not do)."""

    __tablename__ = "access_keys"
    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[bytes] = mapped_column(LargeBinary)  # nonce + AES-GCM ciphertext
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ClientTokenRow(Base):
    """An EC2 ClientToken seen: the same token again gets the same answer."""

    __tablename__ = "client_tokens"
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))  # of the request's other parameters
    result: Mapped[list[str]] = mapped_column(JSON)  # ids created; [] while in progress
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TerminatedInstanceRow(Base):
    """What a deleted instance looked like, kept for a while (EC2 shows terminated ones)."""

    __tablename__ = "terminated_instances"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    view: Mapped[dict[str, Any]] = mapped_column(JSON)
    terminated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)


class ResourceTagRow(Base):
    """Tags of the resources whose row has none (volumes, snapshots, images, ...)."""

    __tablename__ = "resource_tags"
    resource_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    value: Mapped[str] = mapped_column(String(256))


class VolumeDeviceNameRow(Base):
    """The device name an EC2 client attached a volume as (`/dev/sdf`): EC2 shows it back, while
    the guest sees the next virtio disk (VolumeRow.device)."""

    __tablename__ = "volume_device_names"
    volume_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    device: Mapped[str] = mapped_column(String(32))


class MigrationRow(Base):
    """A live migration of an instance from its host to another (cumulo.services.migrations).

    No foreign keys: the record outlives its instance (history). `active`: the destination
    holds capacity for the instance (placement counts it) until the migration completed or the
    destination confirmed its clean-up. `switched`: the source reported the switch-over done;
    from then on the migration can only complete. `source_done` / `destination_done`: that
    side has finished (or rolled back) its part; until then its agent is told its role.
    """

    __tablename__ = "migrations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(32), index=True)
    instance_name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(String(32))
    source_host_id: Mapped[str] = mapped_column(String(32), index=True)
    destination_host_id: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What the destination told: its address, NBD port and export, migration port.
    incoming: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    downtime_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    active: Mapped[bool] = mapped_column(default=True, index=True)
    switched: Mapped[bool] = mapped_column(default=False)
    source_done: Mapped[bool] = mapped_column(default=False)
    destination_done: Mapped[bool] = mapped_column(default=False)
    # A cold move (a stopped instance's disk, nothing runs) and the digest of the disk its
    # source sent (checked by the destination before the instance changes host).
    cold: Mapped[bool] = mapped_column(default=False, server_default=false())
    checksum: Mapped[str] = mapped_column(String(80), default="", server_default="")
    # The host CPUs the instance gets on a dedicated destination (picked there at the start,
    # held like its capacity; the instance's own once it arrives). None: a shared host.
    cpu_set: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class BaremetalNodeRow(Base):
    """A physical server with a BMC, enrolled by an operator (see domain.baremetal)."""

    __tablename__ = "baremetal_nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    zone: Mapped[str] = mapped_column(String(63), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    arch: Mapped[str] = mapped_column(String(16))
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    redfish_url: Mapped[str] = mapped_column(String(255))
    redfish_system: Mapped[str] = mapped_column(String(160))
    bmc_username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # AES-GCM with the server key, the node id as associated data (services.sealed).
    bmc_password: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    power_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # What the last inspection read over Redfish (arch, vcpus, ram_mib, disk_gib).
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The bm1.* instance deployed on it; unique: one node never holds two instances.
    instance_id: Mapped[str | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), nullable=True, index=True, unique=True)
    # Bumped by every change: a conductor step writes its result only if the node is still
    # as it read it (a delete, or another API process's conductor, may have moved it meanwhile).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The deploy under way (services.baremetal_deploy_steps): the step done last, the sha256
    # of its one-time token (the token is only in the URLs given to the node), the deadline
    # (the token expires with it) and what the node's deploy ramdisk reported.
    deploy_step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    deploy_token: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True,
                                                     index=True)
    deploy_deadline: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    deploy_report: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The power action (stop, start, reboot) a conductor applies to its instance's machine
    # (services.baremetal_power); with updated_at, a lease against a second conductor.
    power_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The node's NIC (services.baremetal_ports): its MAC (read at inspection over Redfish)
    # and the name of the host whose fabric its switch port is on (given at enrollment; a
    # name: the host may register later). Either NULL: the node's servers have no network.
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    port_host: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class UsageIntervalRow(Base):
    """A stretch of time during which a resource paid one price (cumulo.services.metering):
    opened and closed in the transaction that records the resource's state change, so usage
    is computed from these rows (across restarts), never from a counter. No foreign keys:
    usage outlives what it tells of."""

    __tablename__ = "usage_intervals"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(32), index=True)
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    resource_name: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(32))  # instance | boot_disk | volume | ...
    basis: Mapped[str] = mapped_column(String(80))  # the price's name: "type s1.medium", ...
    quantity: Mapped[int] = mapped_column(Integer)  # 1, or GiB
    # The price per unit and period when the interval opened, as exact decimal text (a later
    # change of the configured prices does not reprice the past).
    unit_price: Mapped[str] = mapped_column(String(32))
    period_hours: Mapped[int] = mapped_column(Integer)  # 1 (per hour) or 730 (per month)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
