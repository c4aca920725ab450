"""What a running QEMU VM uses, read the way the host sees it (for the agent's /metrics):
CPU time and RSS from /proc/<pid>, disk bytes from QMP `query-blockstats`, network bytes
from its taps' counters in /proc/<pid>/net/dev (QEMU runs inside the host's network
namespace, so that file lists the namespace's interfaces, the VM's taps among them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qmp import qmp_execute
from cumulo.agent.net.names import tap_name

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_use(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of a process; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
    return cpu, int(statm.split()[1]) * _PAGE


def tap_bytes(pid: int, vm_id: str) -> dict[str, tuple[int, int]]:
    """tap -> (bytes from the guest, bytes to the guest) of this VM's taps. A tap receives
    what the guest sends."""
    prefix = tap_name(vm_id, 0)[:-1]
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, counters = line.partition(":")
        name = name.strip()
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            c = counters.split()
            out[name] = (int(c[0]), int(c[8]))
    return out


async def block_bytes(qmp_sock: Path, timeout: float) -> dict[str, tuple[int, int]]:
    """device -> (bytes read, bytes written) as the guest asked them (QMP query-blockstats).
    Empty when QMP does not answer (counted in cumulo_agent_qmp_errors_total)."""
    try:
        stats: list[dict[str, Any]] = await qmp_execute(qmp_sock, "query-blockstats",
                                                        timeout=timeout)
    except DriverError:
        return {}
    out: dict[str, tuple[int, int]] = {}
    for entry in stats:
        name = entry.get("device") or entry.get("qdev") or entry.get("node-name") or "?"
        s = entry.get("stats", {})
        out[str(name)] = (int(s.get("rd_bytes", 0)), int(s.get("wr_bytes", 0)))
    return out
