"""The wire format between the API and host agents (both sides import this module)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cumulo.domain.disk_errors import WriteErrorPolicy


class HostDisk(BaseModel):
    """The filesystem of a host's state dir (instance disks, volumes): placement's input."""

    total_mib: int
    free_mib: int


class HostRegistration(BaseModel):
    name: str
    zone: str
    architectures: list[str]
    vcpus: int
    ram_mib: int
    driver: str
    accel: str
    agent_url: str = ""
    agent_version: str = ""  # cumulo's version on the host (an older agent sends none)
    underlay_ip: str | None = None  # its address on the underlay (None: a single-host cloud)
    disk: HostDisk | None = None  # None: an agent that does not report it (not checked)


class Registered(BaseModel):
    host_id: str


class ImageRef(BaseModel):
    id: str
    boot: str
    disk_path: str
    kernel_path: str | None
    initrd_path: str | None
    kernel_cmdline: str


class DnsRecord(BaseModel):
    hostname: str  # the instance name (a DNS label)
    fqdn: str  # <name>.<project>.<zone>.<cloud domain>
    ip: str
    mac: str


class NetworkRef(BaseModel):
    """A private network (one Linux bridge inside the host's namespace, one dnsmasq)."""

    id: str  # "net-<17 hex>"
    project: str
    cidr: str  # e.g. "10.100.3.0/24"
    gateway: str  # the bridge's own address; also DHCP + DNS server for the network
    dns_domain: str  # "<project>.<zone>.<cloud domain>"
    # Every instance on the network; or, when records_since is set, only the records added or
    # changed since the version records_since of the same epoch (records_removed: MACs gone).
    # Hosts send back epoch:version (the `dns` query parameter) to receive such deltas.
    records: list[DnsRecord] = Field(default_factory=list)
    records_epoch: str = ""
    records_version: int = 0
    records_since: int | None = None
    records_removed: list[str] = Field(default_factory=list)


class NicRef(BaseModel):
    network_id: str
    mac: str  # "52:xx:xx:xx:xx:xx" (locally administered)
    ip: str


class FirewallRule(BaseModel):
    """One ingress allow rule of a security group (egress is always allowed)."""

    proto: str  # tcp | udp | icmp
    port: int | None = None  # None: every port (tcp/udp); ignored for icmp
    cidr: str = "0.0.0.0/0"


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
    fqdn: str = ""
    bandwidth_mbps: int = 0  # 0: no cap
    nics: list[NicRef] = Field(default_factory=list)
    ingress: list[FirewallRule] = Field(default_factory=list)
    public_ip: str | None = None  # all-in-one: a loopback address forwarding into the VM
    boot_write_error: WriteErrorPolicy = "stop"  # see VolumeAssignment.write_error


class VolumeAssignment(BaseModel):
    """A volume whose file lives on this host, and the instance it should be attached to."""

    id: str  # "vol-<17 hex>"; also the disk serial the guest sees
    size_gib: int  # desired size: grown (never shrunk) when larger than the file
    iops: int  # QEMU throttling of the attachment
    mbps: int
    # A write the host cannot do (full disk): "stop" pauses the VM until it can, "report"
    # fails the write in the guest (EIO). From the volume's type.
    write_error: WriteErrorPolicy = "stop"
    desired: str  # "present" | "deleted"
    attach_to: str | None = None  # instance id on this host, None: detached
    device: str | None = None  # expected guest device name (e.g. "vdc"), informational
    source_snapshot: str | None = None  # snapshot id to copy from when the file is created
    generation: int


class SnapshotAssignment(BaseModel):
    """A snapshot stored on this host: taken from `volume_id` once, then kept until deleted."""

    id: str  # "snap-<17 hex>"
    volume_id: str | None  # None once the source volume is gone
    desired: str  # "present" | "deleted"


class Assignments(BaseModel):
    version: int  # the notifier version; long-poll again with since=version
    instances: list[Assignment]
    # The instance list as a delta (see cumulo.agent.instance_book): `view` names the list
    # this answer stands for (EPOCH:SERIAL, "" from an API that does not journal); the host
    # claims it back (`have`) in its next poll. With `instances_since` set, `instances` holds
    # only the instances added or changed since the list the host claimed, and
    # `instances_removed` the ids gone from it; with None, `instances` is the whole list.
    view: str = ""
    instances_since: str | None = None
    instances_removed: list[str] = Field(default_factory=list)
    networks: list[NetworkRef] = Field(default_factory=list)  # those the instances use
    volumes: list[VolumeAssignment] = Field(default_factory=list)
    snapshots: list[SnapshotAssignment] = Field(default_factory=list)


class Observation(BaseModel):
    id: str
    state: str  # an InstanceState value, or "deleted"
    reason: str = ""
    generation: int  # the assignment generation this observation answers
    reboot_done_seq: int | None = None
    guest_initiated: bool = False  # the guest powered itself off


class VolumeObservation(BaseModel):
    id: str
    state: str  # creating | available | attaching | in-use | detaching | error | deleted
    attached_to: str | None = None
    size_gib: int = 0
    reason: str = ""
    generation: int


class SnapshotObservation(BaseModel):
    id: str
    state: str  # creating | available | error | deleted
    size_gib: int = 0
    reason: str = ""


class Report(BaseModel):
    observations: list[Observation]
    volumes: list[VolumeObservation] = Field(default_factory=list)
    snapshots: list[SnapshotObservation] = Field(default_factory=list)
    disk: HostDisk | None = None  # sent when it changed notably since the last report


class Poll(BaseModel):
    """A long-poll for assignments (POST .../assignments): answered at once when anything
    changed since `since`, else after up to `wait` s. `dns` (NETWORK:EPOCH:VERSION) and
    `have` (an earlier answer's `view`) say what the host holds, so that only changes come
    back. `report` is what the pass caused by the last answer observed: it rides on the next
    poll, so a change costs the host one request instead of a report and a poll."""

    since: int = -1
    wait: float = Field(default=0.0, ge=0.0)
    dns: list[str] = Field(default_factory=list)
    have: str | None = Field(default=None, max_length=64)
    report: Report | None = None
