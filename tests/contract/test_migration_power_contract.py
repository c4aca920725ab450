"""The driver contract's two-host calls when the guest powers off (issue 25's storm, seed
626427342), on the fake and the QEMU driver: a guest that powered itself off before the
switch-over arrives powered off (QEMU carries the runstate over, and refuses `cont` in it:
finish used to fail on that for good), and finish still ends the move on both sides; a guest
asked to power off is not moved while it may still obey."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from cumulo.agent.drivers.base import DriverError, MigrationState, PowerState, VMSpec
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.drivers.qemu import QemuDriver
from cumulo.agent.drivers.qmp import qmp_execute
from tests.contract.test_migration_contract import Host, Pair, assert_clean, follow, pair

__all__ = ["pair"]  # the fixture, shared
READY = "cumulo-tiny: ready"  # a boot of the guest, on its console


async def _power(host: Host, vm_id: str, want: PowerState, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (obs := (await host.driver.observe()).get(vm_id)) is None or obs.power is not want:
        assert time.monotonic() < deadline, f"{vm_id} on {host.dir}: {obs}, not {want}"
        await asyncio.sleep(0.5)


async def _guest_powers_off(host: Host, vm_id: str) -> None:
    """The guest powers itself off (its power button, as `poweroff` in it): nobody in
    cumulo asked (no request_shutdown)."""
    if isinstance(host.driver, FakeDriver):
        host.driver.simulate_guest_poweroff(vm_id)
    else:
        assert isinstance(host.driver, QemuDriver)
        await qmp_execute(host.driver.paths(vm_id).qmp_sock, "system_powerdown", timeout=5.0)
    await _power(host, vm_id, PowerState.SHUTDOWN)


async def _switched(pair: Pair, spec: VMSpec) -> None:
    """`spec`'s migration from a to b, started and followed until the source completed."""
    incoming = await pair.prepare(spec)
    await pair.a.driver.migrate_out(spec.vm_id, incoming)
    end = (await follow(pair.a.driver, spec.vm_id, timeout=900))[-1]
    assert end.state is MigrationState.COMPLETED, end


async def _boots_on_b(pair: Pair, vm_id: str) -> None:
    """A start on b boots the VM from the disk that arrived there."""
    b = pair.b
    booted = (await b.driver.console_log(vm_id)).count(READY)
    await b.driver.start(pair.spec(b, vm_id))
    deadline = time.monotonic() + pair.boot_timeout
    while (await b.driver.console_log(vm_id)).count(READY) <= booted:
        assert time.monotonic() < deadline, await b.driver.console_log(vm_id)
        await asyncio.sleep(0.5)


async def test_a_guest_powered_off_before_the_switch_over_arrives_off_and_finishes(
        pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = await pair.start_on_a()
    await pair.ticks(a, spec.vm_id, at_least=2)  # booted, its marker synced to its disk
    # Off before the copy starts: what QEMU carries over is the runstate at the switch-over,
    # the same for a guest that powers off at any moment of the copy (and deterministic).
    await _guest_powers_off(a, spec.vm_id)
    off = (await a.driver.observe())[spec.vm_id]
    assert not off.power_off_requested  # the guest chose it
    await _switched(pair, spec)

    await b.driver.finish_migration(spec.vm_id)  # not resumed: it arrived powered off
    await b.driver.finish_migration(spec.vm_id)  # idempotent
    arrived = (await b.driver.observe())[spec.vm_id]
    assert (arrived.power, arrived.power_off_requested) == (PowerState.SHUTDOWN, False)
    assert await b.driver.migration_status(spec.vm_id) is None
    await a.driver.finish_migration(spec.vm_id)
    await assert_clean(a, spec)

    # What the destination's agent does with a guest that powered off; then a start there
    # boots it from the disk that arrived.
    await b.driver.force_stop(spec.vm_id)
    assert (await b.driver.observe())[spec.vm_id].power is PowerState.STOPPED
    await _boots_on_b(pair, spec.vm_id)


async def test_a_guest_asked_to_power_off_is_not_moved(pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = await pair.start_on_a()
    await pair.ticks(a, spec.vm_id, at_least=1)
    await a.driver.request_shutdown(spec.vm_id)  # a stop (a start may replace it)
    incoming = await pair.prepare(spec)
    with pytest.raises(DriverError, match="asked to power off"):
        await a.driver.migrate_out(spec.vm_id, incoming)
    assert await a.driver.migration_status(spec.vm_id) is None
    await b.driver.cancel_migration(spec.vm_id)
    await assert_clean(b, spec)
    # It obeys: the driver says it was asked (the agent starts it again if a start came).
    await _power(a, spec.vm_id, PowerState.SHUTDOWN)
    assert (await a.driver.observe())[spec.vm_id].power_off_requested


async def test_a_destination_that_dies_after_the_switch_over_finishes_as_a_crash(
        pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = await pair.start_on_a()
    await pair.ticks(a, spec.vm_id, at_least=2)
    await _switched(pair, spec)
    b.crash(spec.vm_id)  # kill -9 of the arrived QEMU before finish let the guest run

    await b.driver.finish_migration(spec.vm_id)  # it used to fail for ever: "not arrived"
    dead = (await b.driver.observe())[spec.vm_id]
    assert dead.power is PowerState.CRASHED and "exited" in dead.reason, dead
    assert await b.driver.migration_status(spec.vm_id) is None
    await a.driver.finish_migration(spec.vm_id)
    await assert_clean(a, spec)
    # Its disk arrived whole: a start there boots it.
    await _boots_on_b(pair, spec.vm_id)


async def test_an_arrival_that_cannot_be_resumed_gives_up_as_a_crash(pair: Pair) -> None:
    a, b = pair.a, pair.b
    spec = await pair.start_on_a()
    await pair.ticks(a, spec.vm_id, at_least=2)
    await _switched(pair, spec)
    # Its QEMU cannot resume it (the fake: refuses `cont`; QEMU: frozen, its monitor silent).
    if isinstance(b.driver, FakeDriver):
        b.driver.host.unresumable.add(spec.vm_id)
    else:
        assert isinstance(b.driver, QemuDriver)
        os.kill(int(b.driver.paths(spec.vm_id).pidfile.read_text()), signal.SIGSTOP)
    b.driver.finish_give_up_s = 3600.0
    with pytest.raises(DriverError):
        await b.driver.finish_migration(spec.vm_id)  # tried again at the next pass
    assert await b.driver.migration_status(spec.vm_id) is not None
    b.driver.finish_give_up_s = 0.0
    await b.driver.finish_migration(spec.vm_id)  # gives up: a crash, with why
    dead = (await b.driver.observe())[spec.vm_id]
    assert dead.power is PowerState.CRASHED, dead
    assert dead.reason.startswith("it arrived by live migration but could not be resumed"), dead
    assert await b.driver.migration_status(spec.vm_id) is None
    await a.driver.finish_migration(spec.vm_id)
    await assert_clean(a, spec)
