"""Server configuration: the catalogue (regions, zones, instance types), placement's policy,
and the local host that `cumulo up` runs (the API itself knows hosts only from their
registrations).

Read from a TOML file (`<state-dir>/cumulo.toml` when present, or `--config`); every key has a
default so `cumulo up` runs with no file at all. Validated once at start-up: a bad file stops
the server with a one-line error rather than misbehaving later.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cumulo.domain.arch import Arch
from cumulo.domain.disk_errors import WriteErrorPolicy
from cumulo.domain.errors import InvalidInput
from cumulo.domain.migration import Limits
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB, MAX_TB_SIZE_MIB
from cumulo.domain.validation import MAX_BANDWIDTH_MBPS, MAX_INTEGER, dns_label, short_text

# What the file's names become: directory names (the host), labels of every instance's
# FQDN (zones, the cloud domain), names users type (types). Checked here, before any of it
# reaches a path, the database or a dnsmasq configuration.
_CATALOGUE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?\Z")
# An instance's FQDN is <name>.<project>.<zone>.<cloud_domain>: three labels of up to 63
# characters and their dots leave 61 of DNS's 253.
MAX_CLOUD_DOMAIN = 253 - 3 * 64
# Where bare-metal deploys reach the API: http://HOST[:PORT] (it goes on a kernel command line).
_DEPLOY_URL = r"^http://[A-Za-z0-9.\-]{1,200}(:[0-9]{1,5})?$"


def _reported(check: Callable[[str], str]) -> Callable[[str], str]:
    """`check` (a domain validator, which raises InvalidInput) as pydantic reports it: a
    ValueError, which load_settings shows with the setting's place in the file."""

    def run(value: str) -> str:
        try:
            return check(value)
        except InvalidInput as e:
            raise ValueError(e.message) from None

    return run


def _label(what: str) -> Callable[[str], str]:
    return _reported(lambda v: dns_label(v, what))


def _catalogue_name(value: str, what: str) -> str:
    if not _CATALOGUE_NAME.match(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-63 characters a-z, 0-9, '.' and '-', "
                         "starting and ending with a letter or digit")
    return value


RegionName = Annotated[str, AfterValidator(_label("region name"))]
ZoneName = Annotated[str, AfterValidator(_label("zone name"))]
HostName = Annotated[str, AfterValidator(_label("host name"))]  # a directory
TypeName = Annotated[str, AfterValidator(lambda v: _catalogue_name(v, "type name"))]
Description = Annotated[str, AfterValidator(_reported(lambda v: short_text(v, "description", 200)))]
# A price in the configured currency: exact decimals (a TOML float such as 0.08 is read as the
# decimal it shows), at most 9 places, never negative.
Price = Annotated[Decimal, Field(ge=0, le=10**6, allow_inf_nan=False, decimal_places=9)]


class Region(BaseModel):
    name: RegionName
    zones: list[ZoneName] = Field(min_length=1)


class InstanceType(BaseModel):
    name: TypeName
    vcpus: int = Field(gt=0, le=MAX_INTEGER)
    ram_mib: int = Field(gt=0, le=MAX_INTEGER)
    bandwidth_mbps: int = Field(gt=0, le=MAX_BANDWIDTH_MBPS)
    disk_gib: int = Field(gt=0, le=MAX_INTEGER)
    architectures: list[Arch] = Field(default_factory=lambda: [Arch.X86_64, Arch.ARM64])
    # What a running instance of this type costs per hour; None: prices.vcpu_hour per vCPU
    # plus prices.ram_gib_hour per GiB of RAM (as a custom size is priced).
    price_per_hour: Price | None = None
    # A whole physical server (a bare-metal node that fits: at least these vCPUs, RAM and
    # disk), deployed over its BMC (services.baremetal_instances), rather than a VM.
    baremetal: bool = False


def _default_types() -> list[InstanceType]:
    both = [Arch.X86_64, Arch.ARM64]
    rows = [
        # name        vcpus  ram  Mbit/s disk  per hour   small sizes exist so tests boot many VMs
        ("t1.nano", 1, 128, 100, 1, "0.005"),
        ("t1.micro", 1, 256, 200, 2, "0.01"),
        ("t1.small", 1, 512, 500, 5, "0.02"),
        ("s1.medium", 2, 2048, 1000, 10, "0.06"),
        ("s1.large", 2, 4096, 2000, 20, "0.09"),
        ("m1.xlarge", 4, 8192, 5000, 40, "0.18"),
    ]
    return [
        InstanceType(name=n, vcpus=c, ram_mib=r, bandwidth_mbps=b, disk_gib=d, architectures=both,
                     price_per_hour=Decimal(p))
        for n, c, r, b, d, p in rows
    ] + [
        # Bare metal: a whole server, dearer than a VM of its size. bm1.tiny fits the
        # emulated nodes of `cumulo up --baremetal-nodes` (1 vCPU, 256 MiB, 2 GiB).
        InstanceType(name=n, vcpus=c, ram_mib=r, bandwidth_mbps=b, disk_gib=d,
                     architectures=both, price_per_hour=Decimal(p), baremetal=True)
        for n, c, r, b, d, p in [
            ("bm1.tiny", 1, 256, 1000, 1, "0.10"),
            ("bm1.medium", 16, 65536, 10000, 480, "1.20"),
            ("bm1.large", 64, 262144, 25000, 1800, "4.80"),
        ]
    ]


class PriceSettings(BaseModel):
    """What resources cost (cumulo.services.prices), in `currency`. Instance types carry their
    own hourly price (InstanceType.price_per_hour); these price the rest."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")  # ISO 4217
    # A type without a price, and a custom size: per vCPU and per GiB of RAM, per hour.
    vcpu_hour: Price = Decimal("0.02")
    ram_gib_hour: Price = Decimal("0.005")
    # Per GiB and month (730 hours, as clouds count it) of a volume, an instance's boot disk
    # and a snapshot; per hour of a public IPv4 address; per hour of a whole dedicated host.
    volume_gib_month: Price = Decimal("0.08")
    snapshot_gib_month: Price = Decimal("0.05")
    public_ip_hour: Price = Decimal("0.005")
    dedicated_host_hour: Price = Decimal("2.00")


def _host_ram_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


class LocalHost(BaseModel):
    """The host agent that `cumulo up` starts."""

    name: HostName = Field(default_factory=lambda: _safe_hostname())
    zone: ZoneName = "local-1a"
    # What the host has, as its agent registers it: its cores, and its RAM less what the host
    # keeps for itself. Placement allocates these times the API's cpu_allocation_ratio and
    # ram_allocation_ratio (vCPUs are overcommitted by default; RAM is not).
    vcpus: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0, le=MAX_INTEGER)
    ram_mib: int = Field(default_factory=lambda: max(256, _host_ram_mib() - 2048), gt=0,
                         le=MAX_INTEGER)
    driver: Literal["qemu", "fake"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    # MiB of TCG translation cache per emulated VM (`-accel tcg,tb-size=N`; 0: QEMU's own
    # default, 1 GiB). Chosen by the tcg_memory benchmark; see cumulo.domain.tcg.
    tcg_tb_size_mib: int = Field(default=DEFAULT_TB_SIZE_MIB, ge=0, le=MAX_TB_SIZE_MIB)
    architectures: list[Arch] = Field(default_factory=lambda: [Arch.X86_64, Arch.ARM64])
    stop_timeout_s: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    # What a cleaning erases: "metadata" zeroes the disk's first and last 4 MiB (partition
    # tables, boot loader, GPT's backup: seconds); "full" overwrites every block with zeros
    # (the next tenant reads nothing of the last one's; hours on a big disk).
    erase: Literal["metadata", "full"] = "metadata"
    # The agent's Prometheus endpoint, http://127.0.0.1:PORT/metrics (0: none); with `cumulo
    # up --hosts N` the others take the next ports (hence 16 below the last port).
    metrics_port: int = Field(default=0, ge=0, le=65535 - 16)
    # A VM paused on a full disk is resumed once that disk's filesystem has this much free.
    resume_free_mib: int = Field(default=64, gt=0, le=MAX_INTEGER)
    # Each VM's QEMU runs as its own uid, the first free one of this range (no /etc/passwd
    # entries needed; systemd leaves 1879048192..2147483647 unused).
    qemu_uid_base: int = Field(default=1_900_000_000, ge=1000, le=2**31 - 2)
    qemu_uid_count: int = Field(default=65536, gt=0, le=2**24)
    # The hosts `cumulo up` starts (by name) whose agent config says `storage = true`: when a
    # zone has any, its new volumes are stored on those only.
    storage_hosts: list[HostName] = Field(default_factory=list, max_length=1000)


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _safe_hostname() -> str:
    """This machine's name as a DNS label (the default host name must pass its own check)."""
    raw = socket.gethostname().split(".")[0].lower()
    cleaned = "".join(c if c in _LABEL_CHARS else "-" for c in raw)[:63].strip("-")
    return cleaned or "local"


class VolumeType(BaseModel):
    """A block storage class: QEMU throttles each volume of this type to these limits."""

    name: TypeName
    iops: int = Field(gt=0, le=MAX_INTEGER)
    mbps: int = Field(gt=0, le=MAX_INTEGER)
    description: Description = ""
    # A write the host cannot do (its disk is full): "stop" pauses the VM, losing nothing,
    # until the agent sees room again and resumes it; "report" fails the write in the guest
    # (EIO), which keeps running and handles the error itself.
    write_error: WriteErrorPolicy = "stop"


def _default_volume_types() -> list[VolumeType]:
    return [
        VolumeType(name="standard", iops=500, mbps=50, description="general purpose"),
        VolumeType(name="fast", iops=5000, mbps=250, description="IO-heavy workloads"),
    ]


class NetworkSettings(BaseModel):
    # Default project networks are carved out of this pool, one /default_prefix each.
    private_pool: str = "10.64.0.0/10"
    default_prefix: int = Field(default=20, ge=16, le=28)
    # All-in-one public IPs: a slice of loopback, forwarded into instances (no route to VMs).
    public_pool: str = "127.100.0.0/16"
    # `cumulo up --hosts N`: the simulated hosts' addresses on their underlay (inside cumulo's
    # namespaces only, never routed from the root namespace). Host i gets the i-th address.
    underlay_cidr: str = "10.250.0.0/24"

    @field_validator("private_pool")
    @classmethod
    def _private(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if not (net.version == 4 and net.is_private) or net.is_loopback:
            raise ValueError("private_pool must be a private IPv4 range")
        return v

    @field_validator("underlay_cidr")
    @classmethod
    def _underlay(cls, v: str) -> str:
        net = ipaddress.IPv4Network(v, strict=True)
        if not net.is_private or net.is_loopback or net.prefixlen > 29:
            raise ValueError("underlay_cidr must be a private IPv4 range of at least a /29")
        return v

    @model_validator(mode="after")
    def _apart(self) -> NetworkSettings:
        if ipaddress.IPv4Network(self.underlay_cidr).overlaps(
                ipaddress.IPv4Network(self.private_pool)):
            raise ValueError("underlay_cidr overlaps private_pool")
        return self

    @field_validator("public_pool")
    @classmethod
    def _public(cls, v: str) -> str:
        net = ipaddress.IPv4Network(v, strict=True)
        if not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) or net.prefixlen < 9:
            raise ValueError("public_pool must be a slice of 127.0.0.0/8 (not all of it)")
        return v


def _limit(value: object) -> object:
    """A quota as the file says it: a number, or "unlimited" (None)."""
    return None if value == "unlimited" else value


# A project's limit: at least 0; None (written "unlimited") for none.
Limit = Annotated[Annotated[int, Field(ge=0, le=MAX_INTEGER)] | None, BeforeValidator(_limit)]


class QuotaSettings(BaseModel):
    """What every project may hold unless an admin set its own limits (`cumulo project quota
    set`). Instances, vCPUs and RAM count every instance but those being deleted; volume GiB
    every volume's size; public IPs those allocated with `cumulo ip allocate` (each instance's
    automatic one is bounded by the instances' limit); networks those made with `cumulo
    network create` (not the default network of each zone)."""

    instances: Limit = 100
    vcpus: Limit = 200
    ram_mib: Limit = 262144
    volume_gib: Limit = 2048
    snapshots: Limit = 100
    public_ips: Limit = 20
    networks: Limit = 20
    # Whole hosts reserved with `cumulo dedicated-host allocate` by the project's members
    # (an admin's allocations are not bounded by it): none unless an admin grants some.
    dedicated_hosts: Limit = 0
class Ec2Settings(BaseModel):
    """The EC2 Query API (cumulo.api.ec2)."""

    # How long Describe* still shows a terminated instance (EC2: about an hour).
    terminated_visible_s: int = Field(default=3600, ge=0, le=MAX_INTEGER)
    # The key that encrypts the access keys' secrets: every API process of one cloud needs
    # the same. Default: <state-dir>/server.key, made by `cumulo up` (mode 0600).
    server_key_file: str | None = None


class MigrationSettings(BaseModel):
    """Live migration's time limits (cumulo.domain.migration.overdue): past them the API fails
    the migration; the instance runs on where it was."""

    # From its start to the switch-over: a guest that dirties memory faster than the link
    # carries it, even slowed by auto-converge, does not migrate.
    max_seconds: int = Field(default=600, ge=10, le=86400)
    # From its start to the destination's answer (it made room and listens).
    prepare_seconds: int = Field(default=120, ge=5, le=86400)

    @model_validator(mode="after")
    def _prepare_within_max(self) -> MigrationSettings:
        if self.prepare_seconds > self.max_seconds:
            raise ValueError("prepare_seconds is part of max_seconds: it cannot be longer")
        return self

    def limits(self) -> Limits:
        return Limits(max_s=self.max_seconds, prepare_s=self.prepare_seconds)


class BaremetalSettings(BaseModel):
    """How the bare-metal conductor deploys a node (services.baremetal_deploy_steps)."""

    # From the deploy's start to the ramdisk's report: past it the node goes to `error` and
    # is powered off (its one-time token expires with it).
    deploy_timeout_s: int = Field(default=900, ge=10, le=86400)
    # A stop asks the OS to shut down (Redfish GracefulShutdown: ACPI), and pulls the plug
    # (ForceOff) if the machine is still on after this long, as a VM's stop does.
    stop_timeout_s: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    # What a cleaning erases: "metadata" zeroes the disk's first and last 4 MiB (partition
    # tables, boot loader, GPT's backup: seconds); "full" overwrites every block with zeros
    # (the next tenant reads nothing of the last one's; hours on a big disk).
    erase: Literal["metadata", "full"] = "metadata"
    # The API as BMCs reach it (they fetch the deploy ISO from it: Redfish InsertMedia), and
    # as a node's deploy ramdisk reaches it on the provisioning network (it fetches the image
    # and reports there). `cumulo up --baremetal-nodes` sets both for its emulated nodes;
    # unset, a deploy fails at once saying so.
    media_url: str | None = Field(default=None, pattern=_DEPLOY_URL)
    provision_url: str | None = Field(default=None, pattern=_DEPLOY_URL)


class Settings(BaseModel):
    cloud_domain: str = "cumulo.internal"
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    volume_types: list[VolumeType] = Field(default_factory=_default_volume_types)
    max_volume_gib: int = Field(default=1024, gt=0, le=MAX_INTEGER)
    # Thin instance disks overcommit a host's disk by this ratio: an instance claims its
    # image's size plus disk_gib / ratio of the host's disk (1: no overcommit).
    disk_allocation_ratio: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)
    # What instances' boot disks do on a write error (see VolumeType.write_error).
    boot_disk_write_error: WriteErrorPolicy = "stop"
    # Largest image a user may import (file size and virtual size).
    max_image_gib: int = Field(default=64, gt=0, le=MAX_INTEGER)
    # Networks an image URL may point into besides the public Internet, e.g. a local mirror's
    # ["192.168.1.0/24"]. Loopback, private and link-local addresses are refused otherwise:
    # an import must not be a way to reach the cloud's own services (see download_guard).
    image_url_allowed_networks: list[str] = Field(default_factory=list)
    regions: list[Region] = Field(
        default_factory=lambda: [Region(name="local-1", zones=["local-1a", "local-1b"])]
    )
    instance_types: list[InstanceType] = Field(default_factory=_default_types)
    # The zone of a create that names none (default: the first zone of the first region).
    default_zone: ZoneName | None = None
    # Placement: how many vCPUs (RAM MiB) may be allocated per vCPU (MiB) a host registers,
    # and which hosts the weighers prefer among those that fit: "spread" (the emptiest, so
    # load and the impact of a host failure spread out) or "pack" (the fullest).
    cpu_allocation_ratio: float = Field(default=4.0, gt=0, le=1000, allow_inf_nan=False)
    ram_allocation_ratio: float = Field(default=1.0, gt=0, le=1000, allow_inf_nan=False)
    placement_policy: Literal["spread", "pack"] = "spread"
    # `cumulo host drain`: how many live migrations off one host run at once (the others wait,
    # queued, for their turn).
    drain_concurrency: int = Field(default=2, ge=1, le=64)
    migration: MigrationSettings = Field(default_factory=MigrationSettings)
    # Only `cumulo up` reads this (for the agent it starts); the API never does.
    host: LocalHost = Field(default_factory=LocalHost)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    # Prometheus may read /metrics with this token as well as with an admin token ("": only
    # admin tokens). Kept here, not in the database: it is the operator's, like the file.
    metrics_token: str = Field(default="", pattern=r"^([\x21-\x7e]{16,200})?$")
    ec2: Ec2Settings = Field(default_factory=Ec2Settings)
    prices: PriceSettings = Field(default_factory=PriceSettings)
    baremetal: BaremetalSettings = Field(default_factory=BaremetalSettings)

    @field_validator("cloud_domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if len(v) > MAX_CLOUD_DOMAIN:
            raise ValueError(f"at most {MAX_CLOUD_DOMAIN} characters (instance FQDNs end with it)")
        for label in v.split("."):
            _label("cloud_domain label")(label)
        return v

    @field_validator("image_url_allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a network (e.g. 192.168.1.0/24)") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        zones = self.zone_names()
        if len(zones) != len(set(zones)):
            raise ValueError("a zone name appears in two regions")
        if self.host.zone not in zones:
            raise ValueError(f"host zone {self.host.zone!r} is not in any region")
        if self.default_zone is None:
            self.default_zone = zones[0]
        elif self.default_zone not in zones:
            raise ValueError(f"default_zone {self.default_zone!r} is not in any region")
        names = [t.name for t in self.instance_types]
        if len(names) != len(set(names)):
            raise ValueError("two instance types share a name")
        return self

    def zone_or_default(self, zone: str | None) -> str:
        """`zone`, or the default zone when a request names none."""
        return zone or self.default_zone or self.zone_names()[0]

    def zone_names(self) -> list[str]:
        return [z for r in self.regions for z in r.zones]

    def region_of(self, zone: str) -> str:
        for r in self.regions:
            if zone in r.zones:
                return r.name
        raise KeyError(zone)

    def volume_type(self, name: str) -> VolumeType | None:
        return next((t for t in self.volume_types if t.name == name), None)

    def instance_type(self, name: str) -> InstanceType | None:
        return next((t for t in self.instance_types if t.name == name), None)


def load_settings(path: Path | None) -> Settings:
    """Settings from `path` (missing file = all defaults). Raises InvalidInput on a bad file."""
    data: dict[str, object] = {}
    if path is not None and path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"{path}: not valid TOML: {e}", code="invalid_config") from e
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")  # pydantic's wrapping of our checks
        raise InvalidInput(f"{path}: {where}: {msg}", code="invalid_config") from e
