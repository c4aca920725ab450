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
    disk: HostDisk | None = None  # None: an agent that does not report it (not checked)
    # This host's address on the underlay: where other hosts send its networks' VXLAN
    # packets. None: a host without one (a single all-in-one host), which serves no segment.
    underlay_ip: str | None = None
    # The machine's CPUs (ids) the agent may pin a dedicated host's vCPUs to: all of the
    # machine's, which simulated hosts of one machine share. None: an agent that does not say.
    cpus: list[int] | None = None
    # `storage = true` in the agent's config: new volumes of its zone go to such hosts only
    # (when the zone has any up).
    storage: bool = False


class Registered(BaseModel):
    host_id: str


IMAGE_FILES = ("disk", "kernel", "initrd")  # the files of an image variant, by role


class ImageFile(BaseModel):
    """One file of an image: a host fetches it by image id and role
    (GET /v1/agent/hosts/HOST/images/ID/ROLE) and keeps it only if it is this."""

    sha256: str  # 64 lower-case hex digits
    size: int


class ImageRef(BaseModel):
    """An image variant, by id and content: no path of the API's machine crosses the wire."""

    id: str
    boot: str
    disk: ImageFile
    kernel: ImageFile | None = None  # boot "kernel": direct kernel boot
    initrd: ImageFile | None = None
    kernel_cmdline: str = ""

    def files(self) -> dict[str, ImageFile]:
        """role -> file, for the files this variant has."""
        found = {"disk": self.disk, "kernel": self.kernel, "initrd": self.initrd}
        return {role: f for role, f in found.items() if f is not None}


class DnsRecord(BaseModel):
    """One NIC of an instance on a network: its name, address and where it runs."""

    hostname: str  # the instance name (a DNS label)
    fqdn: str  # <name>.<project>.<zone>.<cloud domain>
    ip: str
    mac: str
    # The underlay address of the host running the instance (its VXLAN endpoint): a host
    # sends this MAC's frames there, and floods to every such address but its own. "": the
    # host has none (nothing is sent over VXLAN for it).
    underlay_ip: str = ""


class NetworkRef(BaseModel):
    """A private network (one Linux bridge inside the host's namespace, one dnsmasq, and a
    VXLAN segment to the other hosts serving it)."""

    id: str  # "net-<17 hex>"
    vni: int = 0  # the network's VXLAN segment (unique in the cloud); 0: none
    project: str
    cidr: str  # e.g. "10.100.3.0/24"
    gateway: str  # the bridge's own address; also DHCP + DNS server for the network
    dns_domain: str  # "<project>.<zone>.<cloud domain>"
    # Every instance on the network, wherever it runs (a change of host is a change of its
    # record: the hosts' VXLAN forwarding entries follow the records); or, when
    # records_since is set, only the records added or changed since the version
    # records_since of the same epoch (records_removed: MACs gone).
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
    # `image create-from-instance`: export the stopped VM's disk and upload it
    # (PUT /v1/agent/hosts/HOST/exports/ID); the VM is not started while this is set.
    export_id: str | None = None
    boot_write_error: WriteErrorPolicy = "stop"  # see VolumeAssignment.write_error
    # On a dedicated host: the host CPUs of this instance alone, one per vCPU (vCPU i is
    # pinned to cpu_set[i]); empty: not pinned.
    cpu_set: list[int] = Field(default_factory=list)


class PortAssignment(BaseModel):
    """A port without a VM: the NIC of a deployed bare-metal server, cabled to this host's
    fabric (its tap: `names.port_tap_name(mac)`, opened by the server's BMC side). The host
    plugs it like a VM's tap (bridge, DHCP entry, security groups); nothing runs here."""

    id: str  # the bm1 instance's id
    nics: list[NicRef] = Field(default_factory=list)
    ingress: list[FirewallRule] = Field(default_factory=list)


class NbdLink(BaseModel):
    """A volume's NBD export between two hosts: the storage host serves `name` on `port` of
    its underlay address `host`, over TLS with the pre-shared `key` (64 hex digits, identity:
    the volume id). Both secrets are made by the API per attachment; no guest sees them."""

    host: str = ""  # the storage host's underlay address ("" in the storage host's own copy)
    port: int
    name: str
    key: str


class VolumeAssignment(BaseModel):
    """A volume whose file lives on this host, and the instance it should be attached to;
    or (`remote` set) a volume of another host to attach to an instance of this one."""

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
    # The storage host: export the file over NBD (to an instance of another host) as this.
    export: NbdLink | None = None
    # The instance's host: the volume is on another host; attach it over this NBD export.
    remote: NbdLink | None = None


class SnapshotAssignment(BaseModel):
    """A snapshot stored on this host: taken from `volume_id` once, then kept until deleted."""

    id: str  # "snap-<17 hex>"
    volume_id: str | None  # None once the source volume is gone
    desired: str  # "present" | "deleted"


class MigrationAssignment(BaseModel):
    """This host's part in a live migration (cumulo.domain.migration.Step): the destination
    prepares, then finishes; the source migrates, then finishes; either aborts."""

    id: str  # "mig-<17 hex>"
    role: str  # "destination" | "source"
    step: str  # prepare | migrate | finish | abort | discard
    instance_id: str
    instance: Assignment | None = None  # prepare: the instance as its source is assigned it
    # prepare: the source disk's virtual size; migrate: what the destination said.
    disk_bytes: int = 0
    incoming: dict[str, str | int] | None = None
    # A cold move (a stopped instance: its disk only). The source gets `instance` too (its
    # disk's path); the destination's finish gets the source's digest to check the copy by.
    cold: bool = False
    checksum: str = ""


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
    migrations: list[MigrationAssignment] = Field(default_factory=list)
    ports: list[PortAssignment] = Field(default_factory=list)  # bare-metal NICs cabled here


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


class MigrationObservation(BaseModel):
    """What a host saw of its part in a migration: the step it answers, its driver's state
    (cumulo.domain.migration.SIDE_STATES; "done": the finish or abort step is carried out)."""

    id: str
    step: str
    state: str
    reason: str = ""
    incoming: dict[str, str | int] | None = None  # the destination's, once prepared
    progress: dict[str, int] = Field(default_factory=dict)
    downtime_ms: int | None = None
    total_s: float | None = None
    checksum: str = ""  # a cold move's source, completed: the digest of the disk it sent


class Report(BaseModel):
    observations: list[Observation]
    migrations: list[MigrationObservation] = Field(default_factory=list)
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


class EdgeEntry(BaseModel):
    """One public address as the edge serves it (see cumulo.edge)."""

    public_ip: str
    instance_id: str
    private_ip: str  # the instance's first NIC
    host_ip: str | None  # the underlay address of the host that runs it (None: none known)
    rules: list[FirewallRule]  # the instance's ingress rules (its security groups)
    fqdn: str | None = None  # the instance's name: the edge's DNS answers it with public_ip


class EdgeTable(BaseModel):
    version: int  # the notifier's edge version; long-poll again with since=version
    entries: list[EdgeEntry]
