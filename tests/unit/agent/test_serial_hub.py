"""The agent's serial hub: viewers share one port, the last one to leave closes it (the
WebSocket path through the API and the agent: tests/integration/test_serial_console.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import DriverError, VMSpec
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.serial_hub import SerialHub, Viewer
from cumulo.domain.arch import Arch

VM = "i-00000000000000001"


def spec() -> VMSpec:
    return VMSpec(VM, "web-1", Arch.X86_64, 1, 128, Path("/nonexistent.qcow2"))


async def read_until(viewer: Viewer, text: bytes, timeout: float = 2.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while text not in seen:
            chunk = await viewer.output.get()
            assert chunk is not None, f"stream ended before {text!r}: {seen!r}"
            seen += chunk
    return seen


async def test_viewers_share_one_port_and_the_last_one_closes_it() -> None:
    driver = FakeDriver(check_paths=False)
    await driver.start(spec())
    hub = SerialHub(driver)
    a = await hub.join(VM)
    b = await hub.join(VM)
    vm = driver.host.vms[VM]
    assert len(vm.ports) == 1 and hub.open_ports() == {VM}  # one connection for both
    await a.type(b"echo hi from a\r")
    assert b"hi from a" in await read_until(b, b"hi from a\r\n")  # b sees what a typed
    await read_until(a, b"hi from a\r\n")
    await a.leave()
    assert hub.open_ports() == {VM} and not vm.ports[0].closed
    await b.leave()
    assert hub.open_ports() == set()
    assert all(p.closed for p in vm.ports)


async def test_a_stopped_vm_ends_every_viewer_and_frees_the_port() -> None:
    driver = FakeDriver(check_paths=False)
    await driver.start(spec())
    hub = SerialHub(driver)
    viewer = await hub.join(VM)
    await driver.force_stop(VM)
    async with asyncio.timeout(2):
        while (await viewer.output.get()) is not None:
            pass
    await asyncio.sleep(0)
    assert hub.open_ports() == set()
    await viewer.leave()  # after the end: harmless
    with pytest.raises(DriverError, match="not running"):
        await hub.join(VM)


async def test_a_viewer_that_does_not_read_is_dropped_not_the_guest_slowed() -> None:
    driver = FakeDriver(check_paths=False)
    await driver.start(spec())
    hub = SerialHub(driver)
    slow = await hub.join(VM)
    fast = await hub.join(VM)
    for i in range(1100):  # more chunks than a viewer's queue holds
        await fast.type(b"x")
        assert (await fast.output.get()) is not None or i < 0
    chunks = []
    while not slow.output.empty():
        chunks.append(slow.output.get_nowait())
    assert chunks[-1] is None  # dropped: its stream ends
    assert hub.open_ports() == {VM}  # the other viewer goes on
    await fast.leave()
    assert hub.open_ports() == set()


async def test_first_viewers_joining_together_open_the_port_once() -> None:
    driver = FakeDriver(check_paths=False)
    await driver.start(spec())
    hub = SerialHub(driver)
    viewers = await asyncio.gather(*(hub.join(VM) for _ in range(5)))
    assert len(driver.host.vms[VM].ports) == 1
    for v in viewers:
        await v.leave()
    assert hub.open_ports() == set()
