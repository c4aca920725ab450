"""Pinning vCPU threads: QEMU's answer read in vCPU order, a CPU set that does not give each
vCPU a CPU of this machine refused, and a real thread bound to its CPU."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError
from cumulo.agent.drivers.qemu_pinning import check_cpu_set, pin_threads, vcpu_threads


def test_threads_are_read_in_vcpu_order() -> None:
    answer = [{"cpu-index": 1, "thread-id": 502, "qom-path": "/machine/unattached/device[1]"},
              {"cpu-index": 0, "thread-id": 501, "qom-path": "/machine/unattached/device[0]"}]
    assert vcpu_threads(answer) == [501, 502]
    with pytest.raises(DriverError):
        vcpu_threads({"return": {}})


def test_a_cpu_set_gives_each_vcpu_a_cpu_of_this_machine() -> None:
    have = sorted(os.sched_getaffinity(0))
    check_cpu_set((have[0],), 1)
    for bad, vcpus in (((have[0], have[0]), 2), ((have[0],), 2), ((max(have) + 1,), 1)):
        with pytest.raises(DriverError):
            check_cpu_set(bad, vcpus)


def test_a_thread_is_bound_to_its_cpu() -> None:
    cpu = max(os.sched_getaffinity(0))
    started, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def run() -> None:
        tids.append(threading.get_native_id())
        started.set()
        done.wait(10)

    t = threading.Thread(target=run)
    t.start()
    try:
        started.wait(10)
        pin_threads(tids, (cpu,))
        assert os.sched_getaffinity(tids[0]) == {cpu}
    finally:
        done.set()
        t.join()
    # A thread that is gone: an id past pid_max (a joined thread's id may be reused at once).
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    with pytest.raises(DriverError, match="cannot pin"):
        pin_threads([gone], (cpu,))
