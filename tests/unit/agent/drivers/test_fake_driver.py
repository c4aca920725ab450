"""Fake-driver specifics the contract suite does not cover (cost, determinism, options)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.agent.drivers.base import PowerState, VMSpec
from cumulo.agent.drivers.fake import FakeDriver, FakeHost
from cumulo.domain.arch import Arch


def spec(n: int) -> VMSpec:
    return VMSpec(f"i-{n:017x}", f"h{n}", Arch.X86_64, 1, 128, Path(f"/nonexistent/{n}.qcow2"))


async def test_thousands_of_vms_in_one_driver() -> None:
    # How cheap they are is the control-plane benchmark's to say (bench/), not a test's: a
    # time limit here failed on a loaded machine.
    driver = FakeDriver(check_paths=False)
    for n in range(2000):
        await driver.start(spec(n))
    observed = await driver.observe()
    assert len(observed) == 2000
    assert all(o.power is PowerState.RUNNING for o in observed.values())


async def test_console_is_deterministic_and_tail_bounded() -> None:
    a, b = FakeDriver(check_paths=False), FakeDriver(check_paths=False)
    for d in (a, b):
        await d.start(spec(1))
        await d.reboot(spec(1).vm_id)
    log = await a.console_log(spec(1).vm_id)
    assert log == await b.console_log(spec(1).vm_id)
    assert log.count("cumulo-tiny: ready") == 2 and "hostname: h1" in log
    assert len(await a.console_log(spec(1).vm_id, max_bytes=10)) <= 10


async def test_shutdown_request_shows_on_next_observe() -> None:
    driver = FakeDriver(check_paths=False)
    pid = (await driver.start(spec(1))).pid
    await driver.request_shutdown(spec(1).vm_id)
    obs = (await driver.observe())[spec(1).vm_id]
    assert (obs.power, obs.pid) == (PowerState.SHUTDOWN, pid)
    assert "Power down" in await driver.console_log(spec(1).vm_id)


async def test_shared_host_outlives_the_driver() -> None:
    host = FakeHost()
    pid = (await FakeDriver(host, check_paths=False).start(spec(1))).pid
    assert (await FakeDriver(host).observe())[spec(1).vm_id].pid == pid


def test_simulate_crash_of_unknown_vm_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        FakeDriver().simulate_crash("i-00000000000000000")
