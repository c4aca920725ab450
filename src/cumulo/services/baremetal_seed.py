"""A bare-metal server's cloud-init NoCloud seed, as its deploy ramdisk fetches it.

A VM gets its seed as a `cidata` disk its host's agent makes from the instance's assignment
(agent.reconciler). A bare-metal node has no agent and no hypervisor: its deploy ramdisk
fetches the seed from `.../deploy/TOKEN/seed` and writes it to a partition of the node's disk
(images/deploy/init), as Ironic writes a config drive to a whole-disk image. The content is
the one a VM of this instance would get, made by the same generator (agent.storage.seed):
instance-id, the hostname and FQDN, the project's keys chosen at create, the user-data. No
network-config, as for a VM (the image configures its NICs by DHCP).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cumulo.agent.storage.seed import SeedContent, seed_iso_bytes
from cumulo.db.tables import InstanceRow, ProjectRow
from cumulo.domain import baremetal as bm
from cumulo.services import baremetal_deploy as deploy
from cumulo.services.context import Services, fqdn


def instance_seed(s: Session, svc: Services, row: InstanceRow) -> SeedContent:
    """The seed content of instance `row`: what an agent builds from its assignment
    (services.agent_views.assigned: its name, FQDN, user-data and keys)."""
    project = s.get(ProjectRow, row.project_id)
    project_name = project.name if project is not None else row.project_id
    return SeedContent(instance_id=row.id, hostname=row.name,
                       fqdn=fqdn(svc, row.name, project_name, row.zone),
                       user_data=row.user_data or None,
                       ssh_public_keys=list(row.ssh_keys or ()))


def seed_iso(svc: Services, token: str) -> bytes:
    """The seed ISO of the instance whose deploy `token` opens (a cleaning's token opens
    none: its wipe writes no seed)."""
    with svc.db.session() as s:
        node = deploy.waiting_node(s, svc, token)
        row = None if node.instance_id is None else s.get(InstanceRow, node.instance_id)
        if node.state != bm.NodeState.DEPLOYING.value or row is None:
            raise deploy.unknown_deploy()
        content = instance_seed(s, svc, row)
    return seed_iso_bytes(**content)
