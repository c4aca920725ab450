"""Instance creation: validate a request, place it, write it (one transaction per batch of
creates, a savepoint per create). No HTTP, no drivers. The rest of an instance's use cases is
in cumulo.services.instances, which re-exports these names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    InstanceRow,
    ProjectRow,
)
from cumulo.domain.arch import Arch
from cumulo.domain.errors import (
    Conflict,
    CumuloError,
    InsufficientCapacity,
    InvalidInput,
    NotFound,
    QuotaExceeded,
)
from cumulo.domain.ids import new_id
from cumulo.domain.instance import (
    DesiredPower,
    InstanceState,
)
from cumulo.domain.validation import (
    MAX_BANDWIDTH_MBPS,
    dns_label,
    enough_ram,
    positive,
    tags,
    user_data,
)
from cumulo.protocol import DnsRecord
from cumulo.scheduler.placement import (
    Request,
    disk_claim_mib,
    largest_possible,
    place,
)
from cumulo.services import (
    baremetal_instances,
    client_tokens,
    dedicated_hosts,
    events,
    hosts,
    images,
    instance_nics,
    keypairs,
    metering,
    placement_groups,
    quotas,
)
from cumulo.services.context import Principal, Services
from cumulo.services.create_batch import CreateBatch
from cumulo.services.instance_views import view, view_of
from cumulo.services.views import InstanceView

DEFAULT_BANDWIDTH_MBPS = 100
# The hosts of a network learn that a host new to it is a flood destination within this many
# seconds (each at a random moment of it, see notifier): less than any guest takes to boot and
# send, and creates that keep landing on new hosts cost each host one wake-up per period
# instead of one per create.
NEW_HOST_WAKE_S = 0.5


@dataclass
class CreateInstance:
    name: str
    image: str
    type: str | None = None
    vcpus: int | None = None
    ram_mib: int | None = None
    bandwidth_mbps: int | None = None
    disk_gib: int | None = None
    arch: str = Arch.X86_64.value
    zone: str | None = None
    user_data: bytes | None = None
    tags: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    network: str | None = None
    private_ip: str | None = None
    placement_group: str | None = None
    tenancy: str | None = None  # shared (default) or dedicated
    dedicated_host: str | None = None  # a dedicated host's id (implies dedicated tenancy)
    # Sent again with the same token (an answer lost), a create answers what it made then.
    client_token: str | None = None


CREATE_ACTION = "CreateInstance"  # the client tokens' action of a REST create


def token_digest(req: CreateInstance) -> str:
    return client_tokens.digest_of({k: v for k, v in asdict(req).items() if k != "client_token"})


def _sizes(svc: Services, req: CreateInstance, arch: Arch) -> tuple[int, int, int, int]:
    """(vcpus, ram_mib, bandwidth_mbps, disk_gib) from a type or a custom size."""
    if req.type is not None:
        if req.vcpus is not None or req.ram_mib is not None:
            raise InvalidInput("give either --type or --vcpus/--ram, not both", code="invalid_size")
        itype = svc.settings.instance_type(req.type)
        if itype is None:
            raise NotFound(f"unknown instance type {req.type!r}", code="unknown_type")
        if arch not in itype.architectures:
            raise InvalidInput(
                f"type {itype.name!r} is not offered for {arch.value}", code="type_arch_mismatch"
            )
        return itype.vcpus, itype.ram_mib, _bandwidth(req, itype.bandwidth_mbps), itype.disk_gib
    if req.vcpus is None or req.ram_mib is None:
        raise InvalidInput("give --type, or both --vcpus and --ram", code="invalid_size")
    return (
        positive(req.vcpus, "vcpus"),
        positive(req.ram_mib, "ram (MiB)"),
        _bandwidth(req, DEFAULT_BANDWIDTH_MBPS),
        0,
    )


def _bandwidth(req: CreateInstance, default: int) -> int:
    """The cap asked for (0 is refused: it is not "no cap"), else the type's or the default."""
    if req.bandwidth_mbps is None:
        return default
    return positive(req.bandwidth_mbps, "bandwidth (Mbit/s)", maximum=MAX_BANDWIDTH_MBPS)


# The statements every create, start, stop or delete runs, built once: building one cost
# more than running it on SQLite.
_NAME_TAKEN = select(InstanceRow.id).where(InstanceRow.project_id == bindparam("project"),
                                           InstanceRow.name == bindparam("name"))


@dataclass(frozen=True)
class CreateCall:
    """One create of a batch: who asks, in which project, for what."""

    who: Principal
    project: str | None
    req: CreateInstance


@dataclass(frozen=True)
class _Size:
    """A create's request, checked without the database."""

    arch: Arch
    zone: str
    vcpus: int
    ram_mib: int
    bandwidth_mbps: int
    disk_gib: int


@dataclass(frozen=True)
class _Created:
    """What a create wrote, for the notifications sent once its transaction committed."""

    view: InstanceView
    host_id: str | None  # None (and no network): a bare-metal server
    network_id: str | None
    record: DnsRecord | None
    event: events.Event


def _size(svc: Services, req: CreateInstance) -> _Size:
    dns_label(req.name, "instance name")
    user_data(req.user_data)
    tags(req.tags)
    arch = Arch.parse(req.arch)
    zone = svc.settings.zone_or_default(req.zone)
    if zone not in svc.settings.zone_names():
        raise NotFound(f"unknown zone {zone!r} (see `cumulo zone list`)", code="unknown_zone")
    vcpus, ram, bw, disk = _sizes(svc, req, arch)
    if req.disk_gib is not None:
        disk = positive(req.disk_gib, "disk size (GiB)", maximum=16384)
    return _Size(arch=arch, zone=zone, vcpus=vcpus, ram_mib=ram, bandwidth_mbps=bw,
                 disk_gib=disk)


def create(svc: Services, who: Principal, project: str | None, req: CreateInstance) -> InstanceView:
    """One instance: `create_many` with a batch of one."""
    out = create_many(svc, [CreateCall(who, project, req)])[0]
    if isinstance(out, CumuloError):
        raise out
    return out


def create_many(svc: Services, calls: Sequence[CreateCall]) -> list[InstanceView | CumuloError]:
    """Create instances in one transaction, each in a savepoint of its own: a create that
    fails (its error is returned in its place) rolls back only what it wrote. The API batches
    the creates that arrive together (cumulo.api.batches): what every create reads (the zone
    lock, host capacities, project, image, network, security groups) and the commit are then
    paid once per batch. Any other error (the database's) fails the whole batch."""
    out: dict[int, InstanceView | CumuloError] = {}
    sized: list[tuple[int, CreateCall, _Size]] = []
    for i, call in enumerate(calls):
        try:
            sized.append((i, call, _size(svc, call.req)))
        except CumuloError as e:
            out[i] = e
    created: list[_Created] = []
    if sized:
        with svc.db.session() as s:
            # First, so that the checks below (name, capacity, addresses, default network and
            # security group) see every create that committed before these. In one order, so
            # that two batches cannot each hold a zone the other waits for.
            for zone in sorted({size.zone for _, _, size in sized}):
                hosts.lock_zone(s, zone)
            batch = CreateBatch(s, svc.settings)
            ready = []
            for i, call, size in sized:
                try:
                    ready.append((i, call, size, batch.project(call.who, call.project)))
                except CumuloError as e:
                    out[i] = e
            if ready:
                batch.lock_projects([prj for *_, prj in ready])
            refused: list[events.Event] = []
            for i, call, size, prj in ready:
                # Read before the checkpoint: a create that fails must not take the zone's
                # capacities with it (the next create would read them again, and at 1,000
                # hosts a full zone made every refused create pay that read).
                batch.capacities(size.zone)
                saved = batch.checkpoint()
                try:
                    if (answered := _answered(s, svc, call, prj)) is not None:
                        out[i] = answered
                        continue
                    with s.begin_nested():
                        done = _create_one(svc, batch, call, size)
                        if call.req.client_token is not None:
                            client_tokens.record(s, prj.id, CREATE_ACTION, call.req.client_token,
                                                 token_digest(call.req), [done.view.id])
                except (CumuloError, IntegrityError) as e:
                    batch.restore(saved)
                    out[i] = e if isinstance(e, CumuloError) else Conflict(
                        f"an instance named {call.req.name!r} or its address is already taken",
                        code="name_taken")
                    if isinstance(e, QuotaExceeded):
                        refused.append(quotas.refusal(e))
                    continue
                out[i] = done.view
                created.append(done)
            events.add(s, [done.event for done in created] + refused)
    for done in created:
        if done.network_id is None or done.record is None:
            continue  # a bare-metal server with no network
        if done.host_id is None:  # bare metal: its port host plugs it once it is deployed
            svc.notifier.dns_changed(done.network_id, added=[done.record])
            continue
        svc.notifier.notify(done.host_id, [done.view.id])
        # A host new to the network is a new VXLAN flood destination for the others: they
        # learn it within NEW_HOST_WAKE_S rather than within the DNS coalescing period.
        new_host = done.host_id not in svc.notifier.dns.subscribers([done.network_id])
        svc.notifier.dns_changed(done.network_id, added=[done.record], skip=done.host_id,
                                 within=NEW_HOST_WAKE_S if new_host else None)
    return [out[i] for i in range(len(calls))]


def _answered(s: Session, svc: Services, call: CreateCall, prj: ProjectRow
              ) -> InstanceView | None:
    """The instance a committed create with this call's client token made (None: new)."""
    if call.req.client_token is None:
        return None
    made = client_tokens.earlier(s, prj.id, CREATE_ACTION, call.req.client_token,
                                 token_digest(call.req))
    if made is None:
        return None
    row = s.get(InstanceRow, made[0])
    if row is None:
        raise Conflict(f"client token {call.req.client_token!r} made instance {made[0]}, since"
                       " deleted", code="idempotent_instance_deleted")
    return view(s, svc, row, prj.name, call.who)


def _create_one(svc: Services, batch: CreateBatch, call: CreateCall, size: _Size) -> _Created:
    s, req, zone, arch = batch.s, call.req, size.zone, size.arch
    prj = batch.project(call.who, call.project)
    image = batch.get(("image", prj.id, req.image, arch.value),
                      lambda: images.resolve_variant(s, prj, req.image, arch.value))
    enough_ram(size.ram_mib, image.min_ram_mib, image.name, arch.value)
    disk = max(size.disk_gib, -(-image.virtual_size_bytes // 2**30), 1)
    if s.scalar(_NAME_TAKEN, {"project": prj.id, "name": req.name}):
        raise Conflict(
            f"an instance named {req.name!r} already exists in project {prj.name!r}",
            code="name_taken",
        )
    if (bm_type := baremetal_instances.type_of(svc.settings, req.type)) is not None:
        bm_view, event, net_id, record = baremetal_instances.create(
            svc, batch, call.who, prj, req, bm_type, zone, arch.value, image)
        return _Created(view=bm_view, host_id=None, network_id=net_id, record=record,
                        event=event)
    vcpus, ram = size.vcpus, size.ram_mib
    caps = batch.capacities(zone)
    max_cpu, max_ram = largest_possible(caps, arch.value, zone)
    if max_cpu and (vcpus > max_cpu or ram > max_ram):
        raise InvalidInput(
            f"{vcpus} vCPUs / {ram} MiB is larger than any {arch.value} host in zone "
            f"{zone} can hold (largest: {max_cpu} vCPUs / {max_ram} MiB)",
            code="too_large",
        )
    budget = batch.budget(svc, prj).charge({"instances": 1, "vcpus": vcpus, "ram_mib": ram},
                                           ("instance", "", req.name))
    group = None if req.placement_group is None else batch.get(
        ("group_row", prj.id, req.placement_group),
        lambda: placement_groups.find(s, prj, cast(str, req.placement_group)))
    tenancy, dedicated = batch.get(("tenancy", prj.id, req.tenancy, req.dedicated_host),
                                   lambda: dedicated_hosts.tenancy_of(s, prj, req.tenancy,
                                                                      req.dedicated_host))
    claim = disk_claim_mib(image.virtual_size_bytes, disk, svc.settings.disk_allocation_ratio)
    placement = place(Request(zone=zone, arch=arch.value, vcpus=vcpus, ram_mib=ram,
                              disk_mib=claim,
                              group=None if group is None else batch.group_rule(group),
                              project=prj.id, tenancy=tenancy, dedicated_host=dedicated),
                      caps, svc.settings.placement_policy)
    if placement.host is None:
        raise InsufficientCapacity(placement.explain(), code="no_host_fits")
    cpu_set = dedicated_hosts.cpu_set_for(s, placement.host, vcpus)
    keys = batch.get(("keys", prj.id, *req.keys), lambda: keypairs.resolve(s, prj, req.keys))
    network, groups = instance_nics.choices(svc, batch, prj, zone, req.network,
                                            req.security_groups)
    row = InstanceRow(
        id=new_id("i"), name=req.name, project_id=prj.id, zone=zone, arch=arch.value,
        type_name=req.type, vcpus=vcpus, ram_mib=ram, bandwidth_mbps=size.bandwidth_mbps,
        disk_gib=disk, disk_mib=claim, image_id=image.id, image_name=image.name,
        host_id=placement.host.host_id, state=InstanceState.PENDING.value,
        placement_group_id=None if group is None else group.id, tenancy=tenancy,
        cpu_set=cpu_set, desired_power=DesiredPower.RUNNING.value, user_data=req.user_data,
        tags=dict(req.tags),
        ssh_keys=[k.public_key for k in keys], key_names=[k.name for k in keys],
    )
    s.add(row)
    s.flush()  # the instance first: the rows below refer to it
    # What this create adds is written in one flush at the end, not one per search.
    address, public_ip = instance_nics.wire(s, svc, prj, row.id, network, groups,
                                            req.private_ip)
    with s.no_autoflush:
        metering.start(s, metering.now(svc), prj.id, row.id, row.name, metering.instance_rates(
            svc.settings, row.state, row.type_name, vcpus, ram, disk))
    s.flush()
    batch.placed(zone, placement.host, vcpus, ram, claim, group)
    batch.charged(budget)
    # Built from what this create just wrote: reading it back took 4 more queries.
    view = view_of(svc, row, prj.name, call.who, host=placement.host.name, host_up=True,
                 network=network.name, private_ip=address.ip, public_ip=public_ip.ip,
                 groups=sorted({g.name for g in groups}),
                 placement_group=None if group is None else group.name,
                 dedicated_host=placement.host.dedicated_id)
    return _Created(view=view, host_id=placement.host.host_id, network_id=network.id,
                    record=DnsRecord(hostname=row.name, fqdn=view.fqdn, ip=address.ip,
                                     mac=address.mac, underlay_ip=batch.underlay(
                                         placement.host.host_id) or ""),
                    event=events.Event(prj.id, "instance", row.id, row.name, "created",
                                       detail=f"{vcpus} vCPUs, {ram} MiB, image {image.name}, "
                                              f"host {placement.host.name}"))
