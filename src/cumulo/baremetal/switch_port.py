"""An emulated machine's cabling to the fabric: its NIC's MAC and its "switch port".

A real server's NIC is cabled to a top-of-rack switch port; cumulo's emulation of that port
is a tap inside a hypervisor host's network namespace (the port host), which the host's
agent plugs into the instance's network like a VM's tap (services.baremetal_ports). The
emulator opens the tap from a thread that has entered that namespace (nothing is ever
created in the root namespace) and hands the fd to the machine's QEMU (`-netdev tap,fd=`):
the tap lives as long as that QEMU does.
"""

from __future__ import annotations

import hashlib
import os
import threading

from cumulo.agent.drivers.qemu_exec import open_tap
from cumulo.agent.net import namespace
from cumulo.agent.net.names import port_tap_name


def mac_of(system_id: str) -> str:
    """The machine's NIC MAC: stable across restarts, locally administered (02:...), never
    one of the VMs' 52:... MACs."""
    h = hashlib.sha256(f"bm-nic:{system_id}".encode()).hexdigest()[:10]
    return "02:" + ":".join(h[i:i + 2] for i in range(0, 10, 2))


def open_port(netns: str, mac: str) -> int:
    """The fd of the machine's switch-port tap in `netns` (created if absent); OSError or
    NetError (a missing namespace) otherwise."""
    name = port_tap_name(mac)
    result: list[int] = []
    errors: list[Exception] = []

    def inside() -> None:  # a thread of its own: it stays in the namespace and then ends
        try:
            namespace.enter(netns)
            result.append(open_tap(name))
        except Exception as e:  # handed to the caller's thread
            errors.append(e)

    t = threading.Thread(target=inside, name=f"port-{name}")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    fd = result[0]
    os.set_inheritable(fd, True)
    return fd
