"""Bare-metal instances (bm1.* types): the user's side of a node.

`instance create --type bm1.X` takes an `available` node of the zone and architecture that
fits (domain.baremetal_fit) and moves it to `deploying` with the instance recorded on it, in
the create's own transaction: the node row is read FOR UPDATE (and the zone is locked by
every create), so two creates never take one node, and a node taken is not deleted under
its instance. An instance on a node has no hypervisor host (host_id stays NULL: no agent
runs it); the bare-metal conductor (services.baremetal_conductor) is what acts on it. A node
with a port (its MAC and port host) puts its server on a project network like a VM: an
address with the node's MAC, security groups, a public IP; its port host plugs it once the
node is active (services.baremetal_ports).

Deleting the instance moves its node to `cleaning`; the conductor wipes its disk, powers it off,
forgets the instance and makes the node `available` again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.config import InstanceType, Settings
from cumulo.db.tables import BaremetalNodeRow, ImageRow, InstanceRow, ProjectRow
from cumulo.domain import baremetal as bm
from cumulo.domain import baremetal_fit as fit
from cumulo.domain.errors import Conflict, InsufficientCapacity, InvalidInput
from cumulo.domain.ids import new_id
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.protocol import DnsRecord
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_ports as ports
from cumulo.services import events, keypairs, lookups, metering
from cumulo.services.auth import require_admin, scope_project
from cumulo.services.baremetal_nodes import move
from cumulo.services.context import Principal, Services
from cumulo.services.create_batch import CreateBatch
from cumulo.services.instance_views import view_of
from cumulo.services.views import InstanceView

if TYPE_CHECKING:  # instances imports this module
    from cumulo.services.instances import CreateInstance


def type_of(settings: Settings, type_name: str | None) -> InstanceType | None:
    """The bare-metal type named `type_name` (None: no type, or a VM's)."""
    itype = None if type_name is None else settings.instance_type(type_name)
    return itype if itype is not None and itype.baremetal else None


def refuse_vm_options(type_name: str, *, tenancy: str | None, dedicated_host: str | None,
                      placement_group: str | None, bandwidth_mbps: int | None,
                      disk_gib: int | None) -> None:
    """A create option that means something for a VM only is refused, not ignored."""
    said = [flag for flag, given in (
        ("--tenancy", tenancy is not None), ("--dedicated-host", dedicated_host is not None),
        ("--placement-group", placement_group is not None),
        ("--disk-size", disk_gib is not None), ("--bandwidth", bandwidth_mbps is not None),
    ) if given]
    if said:
        raise InvalidInput(
            f"{', '.join(said)}: not for a bare-metal server ({type_name} is a whole machine "
            "of its own, with the node's disk and NIC)", code="not_for_baremetal")


def refuse_network_options(req: CreateInstance) -> None:
    """A node with no port (no MAC read, or cabled to no host) cannot put its server on a
    network: asking for one is refused, not ignored."""
    net = [flag for flag, given in (
        ("--network", req.network is not None), ("--private-ip", req.private_ip is not None),
        ("--security-group", bool(req.security_groups))) if given]
    if net:
        raise InvalidInput(f"{', '.join(net)}: the bare-metal node that fits has no network "
                           "port (its NIC's MAC or its port host is unknown)",
                           code="node_has_no_port")


def claim(s: Session, itype: InstanceType, zone: str, arch: str, disk_gib: int
          ) -> BaremetalNodeRow:
    """The node a new instance of `itype` gets (locked, not yet moved), or the refusal that
    says why none fits; `disk_gib`: the least disk (the type's, or the image's if larger)."""
    rows = list(s.scalars(select(BaremetalNodeRow).where(BaremetalNodeRow.zone == zone)
                          .order_by(BaremetalNodeRow.name).with_for_update()))
    want = fit.Want(itype.name, zone, arch, itype.vcpus, itype.ram_mib, disk_gib)
    cands = [fit.Candidate(r.id, r.name, r.state, r.arch, r.vcpus, r.ram_mib, r.disk_gib)
             for r in rows]
    chosen = fit.pick(cands, want)
    if chosen is None:
        raise InsufficientCapacity(fit.explain(cands, want), code="no_node_fits")
    return next(r for r in rows if r.id == chosen.id)


def assign(s: Session, node: BaremetalNodeRow, instance_id: str) -> None:
    """Record the (flushed) instance on its claimed node: the node is `deploying`."""
    node.instance_id = instance_id
    move(s, node, bm.NodeState.DEPLOYING, None)


def node_of(s: Session, instance_id: str, *, lock: bool = False) -> BaremetalNodeRow | None:
    """The node an instance is deployed on (None: the instance is a VM)."""
    q = select(BaremetalNodeRow).where(BaremetalNodeRow.instance_id == instance_id)
    return s.scalar(q.with_for_update() if lock else q)


def refuse_vm_action(name: str, what: str) -> None:
    """`what` (a migration, a volume, a resize...) is for VMs only."""
    raise Conflict(f"instance {name!r} is a bare-metal server: {what} is for VMs only",
                   code="not_for_baremetal")


def refuse_console(name: str) -> None:
    """A server's console is its BMC's serial console (Redfish advertises it in the Manager's
    SerialConsole: IPMI SOL, SSH or Telnet to the BMC), a live stream that no Redfish call
    reads back as a log; cumulo does not relay it (yet). Said plainly rather than
    `has no host yet`, for the console log (REST, EC2's GetConsoleOutput) and the
    interactive serial console alike."""
    raise Conflict(f"instance {name!r} is a bare-metal server: its console is its BMC's serial "
                   "console (IPMI SOL or the BMC's SSH), which Redfish does not read back as a "
                   "log and cumulo does not relay", code="baremetal_no_console")


def require_active(name: str, node: BaremetalNodeRow, what: str) -> None:
    """A power action needs a deployed server: one being deployed, failed or cleaned is
    not powered behind its conductor's back."""
    if node.state != bm.NodeState.ACTIVE.value:
        raise Conflict(f"cannot {what} instance {name!r}: its bare-metal server is "
                       f"{node.state}, not deployed (delete it, or wait for its deploy)",
                       code="invalid_state")


def start_cleaning(s: Session, node: BaremetalNodeRow) -> None:
    """The node's instance is being deleted: the conductor wipes its disk and powers it off.
    A deploy under way is dropped (its token opens nothing more): the cleaning starts anew."""
    if node.state != bm.NodeState.CLEANING.value:
        move(s, node, bm.NodeState.CLEANING, None)
        node.deploy_step = node.deploy_token = node.deploy_report = None
        node.deploy_deadline = None


def create(svc: Services, batch: CreateBatch, who: Principal, prj: ProjectRow, req: CreateInstance,
           itype: InstanceType, zone: str, arch: str, image: ImageRow
           ) -> tuple[InstanceView, events.Event, str | None, DnsRecord | None]:
    """The rest of a bm1 create (name, image and size checked by the caller): refuse what is
    for VMs only, charge the quota, take a node, write the instance and its node, and its
    address if the node has a port. Also the network's id and the instance's DNS record
    (None, None: no network)."""
    s = batch.s
    deploy.require_whole_disk(image)  # else its deploy could only fail, the node in error
    refuse_vm_options(itype.name, tenancy=req.tenancy, dedicated_host=req.dedicated_host,
                      placement_group=req.placement_group, bandwidth_mbps=req.bandwidth_mbps,
                      disk_gib=req.disk_gib)
    budget = batch.budget(svc, prj).charge(
        {"instances": 1, "vcpus": itype.vcpus, "ram_mib": itype.ram_mib},
        ("instance", "", req.name))
    node = claim(s, itype, zone, arch,
                 max(itype.disk_gib, -(-image.virtual_size_bytes // 2**30)))
    if node.mac is None or node.port_host is None:
        refuse_network_options(req)
    keys = batch.get(("keys", prj.id, *req.keys), lambda: keypairs.resolve(s, prj, req.keys))
    row = InstanceRow(
        id=new_id("i"), name=req.name, project_id=prj.id, zone=zone, arch=arch,
        type_name=itype.name, vcpus=itype.vcpus, ram_mib=itype.ram_mib,
        bandwidth_mbps=itype.bandwidth_mbps, disk_gib=node.disk_gib, disk_mib=0,
        image_id=image.id, image_name=image.name, host_id=None,
        state=InstanceState.PENDING.value, state_reason="waiting for its bare-metal deploy",
        desired_power=DesiredPower.RUNNING.value, user_data=req.user_data,
        tags=dict(req.tags), ssh_keys=[k.public_key for k in keys],
        key_names=[k.name for k in keys])
    s.add(row)
    s.flush()  # the instance before the node that refers to it
    assign(s, node, row.id)
    net = None if node.mac is None or node.port_host is None else ports.attach(
        svc, batch, prj, req, zone, row.id, node)
    metering.start(s, metering.now(svc), prj.id, row.id, row.name, metering.instance_rates(
        svc.settings, row.state, row.type_name, row.vcpus, row.ram_mib, row.disk_gib))
    s.flush()
    batch.charged(budget)
    view = view_of(svc, row, prj.name, who, host=None, host_up=None,
                   network=None if net is None else net.network,
                   private_ip=None if net is None else net.private_ip,
                   public_ip=None if net is None else net.public_ip,
                   groups=[] if net is None else net.groups, placement_group=None)
    record = None if net is None else DnsRecord(
        hostname=row.name, fqdn=view.fqdn, ip=net.private_ip, mac=node.mac or "",
        underlay_ip=net.underlay_ip)
    return (view, events.Event(prj.id, "instance", row.id, row.name, "created",
                               detail=f"bare metal {itype.name}, image {image.name}"),
            None if net is None else net.network_id, record)


def refuse_migration(svc: Services, who: Principal, project: str | None, ref: str) -> None:
    """A live migration is for VMs (admins ask; the migration's own checks come next)."""
    require_admin(who)
    with svc.db.session() as s:
        row = lookups.instance_row(s, scope_project(s, who, project), ref)
        if node_of(s, row.id) is not None:
            refuse_vm_action(row.name, "a live migration")
