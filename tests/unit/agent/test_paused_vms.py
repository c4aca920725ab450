"""A VM the hypervisor paused on a failed disk write (issue 17, item 8), through the
reconciler and the fake driver: reported paused with its cause, resumed once its disk has
room again, and rebooted or stopped on request while paused."""

from __future__ import annotations

from pathlib import Path

from cumulo.agent.drivers.base import PowerState, VMSpec
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.reconciler import Reconciler
from cumulo.domain.arch import Arch
from cumulo.protocol import Assignment, ImageFile, ImageRef

VM = "i-0123456789abcdef0"
VOL = "vol-0123456789abcdef0"
MIB = 1024 * 1024


def _assignment(desired: str = "running", reboot_seq: int = 0, generation: int = 1
                ) -> Assignment:
    return Assignment(
        id=VM, hostname="vm", project="default", arch="x86_64", vcpus=1, ram_mib=128,
        disk_gib=1, state="running", desired_power=desired, generation=generation,
        reboot_seq=reboot_seq, reboot_done_seq=0,
        image=ImageRef(id="img-0123456789abcdef0", boot="bios",
                       disk=ImageFile(sha256="0" * 64, size=0)))


async def _setup(tmp_path: Path) -> tuple[FakeDriver, Reconciler, dict[str, int]]:
    driver = FakeDriver(check_paths=False)
    free: dict[str, int] = {}
    rec = Reconciler(driver, tmp_path / "instances", free_bytes=free.get,
                     resume_free_bytes=64 * MIB)
    await driver.start(VMSpec(VM, "vm", Arch.X86_64, 1, 128, tmp_path / "disk.qcow2"))
    (obs,) = await rec.run_pass([_assignment()])
    assert obs.state == "running"
    rec.acknowledge([obs])
    return driver, rec, free


async def test_paused_on_a_full_disk_then_resumed_when_space_is_back(tmp_path: Path) -> None:
    driver, rec, free = await _setup(tmp_path)
    path = str(tmp_path / "volumes" / f"{VOL}.qcow2")
    driver.simulate_io_error(VM, VOL, path)
    free[path] = 0
    (obs,) = await rec.run_pass([_assignment()])
    assert obs.state == "paused"
    assert obs.reason.startswith(f"host disk full (I/O error on {VOL})")
    rec.acknowledge([obs])

    free[path] = 10 * MIB  # some room, not enough to be worth running again
    assert await rec.run_pass([_assignment()]) == []  # nothing changed: still paused
    assert (await driver.observe())[VM].power is PowerState.PAUSED

    driver.host.full_files.discard(path)
    free[path] = 100 * MIB
    (obs,) = await rec.run_pass([_assignment()])
    assert (obs.state, obs.reason) == ("running", "")
    assert (await driver.observe())[VM].power is PowerState.RUNNING


async def test_a_resume_that_fails_again_shows_paused_again(tmp_path: Path) -> None:
    driver, rec, free = await _setup(tmp_path)
    path = str(tmp_path / "v.qcow2")
    driver.simulate_io_error(VM, VOL, path)
    free[path] = 0
    (obs,) = await rec.run_pass([_assignment()])
    rec.acknowledge([obs])
    free[path] = 100 * MIB  # the agent sees room, but the file still cannot be written
    (obs,) = await rec.run_pass([_assignment()])
    assert obs.state == "running"  # resumed ...
    rec.acknowledge([obs])
    free[path] = 0
    (obs,) = await rec.run_pass([_assignment()])
    assert obs.state == "paused"  # ... and paused again by the retried write


async def test_reboot_of_a_paused_vm_resets_it_and_lets_it_run(tmp_path: Path) -> None:
    driver, rec, _ = await _setup(tmp_path)
    driver.simulate_io_error(VM, VOL, "/full/v.qcow2")
    (obs,) = await rec.run_pass([_assignment()])
    assert obs.state == "paused"
    (obs,) = await rec.run_pass([_assignment(reboot_seq=1, generation=2)])
    assert (obs.state, obs.reboot_done_seq) == ("running", 1)
    assert (await driver.observe())[VM].power is PowerState.RUNNING
    assert driver.host.vms[VM].events[-1] == "reset"


async def test_stop_of_a_vm_that_stays_paused_is_forced_at_once(tmp_path: Path) -> None:
    driver, rec, _ = await _setup(tmp_path)
    driver.simulate_io_error(VM, VOL, "/full/v.qcow2")
    await rec.run_pass([_assignment()])
    (obs,) = await rec.run_pass([_assignment("stopped", generation=2)])
    # Its disk still full, it cannot power off cleanly: forced at once, in the first pass
    # (no power-off request that would let it run into the same full disk, no 30 s wait).
    assert obs.state == "stopped"
    assert "could not power off; it was powered off by force" in obs.reason
    assert (await driver.observe())[VM].power is PowerState.STOPPED


async def test_a_stop_then_a_start_before_the_guest_is_off_keeps_the_start(
        tmp_path: Path) -> None:
    """The user's last request wins: the guest powering off for the stop is not taken for a
    guest that chose to (which would make the API record a stop the user did not ask for)."""
    driver, rec, _ = await _setup(tmp_path)
    (obs,) = await rec.run_pass([_assignment("stopped", generation=2)])
    assert obs.state == "stopping"  # asked to power off; the guest is on its way
    (obs,) = await rec.run_pass([_assignment("running", generation=3)])  # started again
    # Powered off as asked, reported starting (not stopped by the guest): the next pass
    # starts it, as for any stopped VM whose user wants it running.
    assert (obs.state, obs.reason, obs.guest_initiated) == ("starting", "", False)
    assert (await driver.observe())[VM].power is PowerState.STOPPED


async def test_paused_on_a_network_volume_tried_again_until_its_storage_host_is_back(
        tmp_path: Path) -> None:
    """A write to a volume over NBD whose storage host went away pauses the VM (`stop`
    policy); the agent resumes it every `remote_retry_s` to try the write again: it pauses
    again while the export is away (still shown paused, no flapping), and runs on once the
    storage host serves it again, with nothing the guest wrote dropped."""
    driver, rec, _free = await _setup(tmp_path)
    rec.remote_retry_s = 3600.0  # one try per pass below, by hand
    driver.simulate_io_error(VM, VOL, "", nospace=False, remote=True)
    (obs,) = await rec.run_pass([_assignment()])  # tried at once: still away
    reason = (f"storage host unreachable (I/O error on network volume {VOL}); resumes when "
              "it is back")
    assert (obs.state, obs.reason) == ("paused", reason)
    rec.acknowledge([obs])
    assert (await driver.observe())[VM].power is PowerState.PAUSED
    # Not tried again before its time, and nothing to report meanwhile.
    driver.host.unreachable.clear()  # the storage host is back
    assert await rec.run_pass([_assignment()]) == []
    assert (await driver.observe())[VM].power is PowerState.PAUSED
    rec._remote_tries.clear()  # its time came
    assert await rec.run_pass([_assignment()]) == []  # resumed; shown paused until seen to run
    assert (await driver.observe())[VM].power is PowerState.RUNNING
    assert "reset" not in driver.host.vms[VM].events  # the write was retried, not dropped
    (obs,) = await rec.run_pass([_assignment()])
    assert (obs.state, obs.reason) == ("running", "")
