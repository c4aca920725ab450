"""Interface and namespace names (pure). Linux limits interface names to 15 bytes.

- namespace `cn-<10 hex>`: a hash of the host dir, so parallel test clouds never collide
- bridge    `cb<12 hex>`:  a hash of the network id (one bridge per network)
- tap       `ct<10 hex><i>`: a hash of the vm id + the NIC index (QEMU creates it)
- ifb       `cf<10 hex><i>`: the IFB device that shapes traffic FROM that tap's VM
- vxlan     `cv<12 hex>`:  the network's VXLAN segment to other hosts (a port of its bridge)
- port      `cp<12 hex>`:  a bare-metal node's "switch port" on this host: the tap its BMC
                           emulator opens, named after the node's MAC (services.baremetal_ports)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

IFNAMSIZ = 15
MAX_NICS = 100


def _h(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def netns_name(host_dir: Path) -> str:
    return "cn-" + _h(str(Path(host_dir).absolute()), 10)


def bridge_name(network_id: str) -> str:
    return "cb" + _h(network_id, 12)


def vxlan_name(network_id: str) -> str:
    return "cv" + _h(network_id, 12)


def gateway_mac(network_id: str) -> str:
    """The bridge's MAC: the same on every host serving the network (the gateway is anycast:
    an instance that changes host keeps a valid ARP entry for it). Locally administered
    unicast, 02:..., never one of the instances' 52:... MACs."""
    h = _h("gateway:" + network_id, 10)
    return "02:" + ":".join(h[i:i + 2] for i in range(0, 10, 2))


def tap_name(vm_id: str, index: int) -> str:
    if not 0 <= index < MAX_NICS:
        raise ValueError(f"NIC index {index} out of range 0..{MAX_NICS - 1}")
    return f"ct{_h(vm_id, 10)}{index}"


def port_tap_name(mac: str) -> str:
    """The tap a bare-metal node's NIC is cabled to: the emulator that opens it and the agent
    that plugs it both know the node by its MAC."""
    digits = mac.lower().replace(":", "")
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"invalid MAC address {mac!r}")
    return "cp" + digits


def is_port_tap(name: str) -> bool:
    return name.startswith("cp") and len(name) == 14


def ifb_name(tap: str) -> str:
    """The IFB twin of a tap (same suffix)."""
    if not tap.startswith("ct"):
        raise ValueError(f"not a cumulo tap: {tap!r}")
    return "cf" + tap[2:]


def is_cumulo_bridge(name: str) -> bool:
    return name.startswith("cb") and len(name) == 14


def is_cumulo_vxlan(name: str) -> bool:
    return name.startswith("cv") and len(name) == 14


def is_cumulo_ifb(name: str) -> bool:
    return name.startswith("cf")
