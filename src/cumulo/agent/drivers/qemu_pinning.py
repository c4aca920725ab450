"""Pin a VM's vCPU threads to host CPUs of its own (instances on a dedicated host).

QEMU runs one thread per vCPU (KVM, and TCG's multi-threaded mode that x86_64 and arm64
guests get on this host); `query-cpus-fast` gives each vCPU's thread id, and vCPU i is bound
to cpu_set[i] with sched_setaffinity. The binding is the kernel's: it outlives the agent, so a
re-adopted VM keeps it.

The host's CPUs are numbered as its agent registered them (by default the machine's CPU
count); a CPU the machine does not have is refused with a clear error rather than ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qmp import qmp_execute


def vcpu_threads(cpus: object) -> list[int]:
    """The thread id of each vCPU, in vCPU order, from QEMU's `query-cpus-fast` answer."""
    if not isinstance(cpus, list):
        raise DriverError("query-cpus-fast answered no list")
    ordered = sorted(cpus, key=lambda c: int(c["cpu-index"]))
    return [int(c["thread-id"]) for c in ordered]


def check_cpu_set(cpu_set: tuple[int, ...], vcpus: int) -> None:
    """One distinct CPU of this machine per vCPU."""
    have = os.sched_getaffinity(0)
    if len(cpu_set) != vcpus or len(set(cpu_set)) != vcpus:
        raise DriverError(f"cpu set {list(cpu_set)} does not give each of {vcpus} vCPUs a CPU "
                          "of its own")
    missing = sorted(set(cpu_set) - have)
    if missing:
        raise DriverError(f"cpu set {list(cpu_set)}: this machine has no CPU {missing} "
                          f"(it has {sorted(have)})")


async def pin_vcpus(qmp_sock: Path, cpu_set: tuple[int, ...], vcpus: int,
                    timeout: float) -> None:
    check_cpu_set(cpu_set, vcpus)
    threads = vcpu_threads(await qmp_execute(qmp_sock, "query-cpus-fast", timeout=timeout))
    if len(threads) != vcpus:
        raise DriverError(f"QEMU runs {len(threads)} vCPU threads, {vcpus} expected")
    pin_threads(threads, cpu_set)


def pin_threads(threads: list[int], cpu_set: tuple[int, ...]) -> None:
    """Thread threads[i] runs on CPU cpu_set[i] only."""
    for tid, cpu in zip(threads, cpu_set, strict=True):
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError as e:
            raise DriverError(f"cannot pin vCPU thread {tid} to CPU {cpu}: {e.strerror}") from e
