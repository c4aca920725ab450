"""A VM paused by the hypervisor on a disk write error (issue 17, item 8): what the user is
told, which actions are allowed, and when the agent may let it run again."""

from __future__ import annotations

import pytest

from cumulo.domain.disk_errors import BOOT_DISK, DiskIoError, may_resume, pause_reason
from cumulo.domain.errors import Conflict
from cumulo.domain.instance import Action, InstanceState, check_transition

VOL = "vol-0123456789abcdef0"
FULL = DiskIoError(VOL, nospace=True, path="/srv/volumes/vol.qcow2")
BOOT_FULL = DiskIoError(BOOT_DISK, nospace=True, path="/srv/instances/i/disk.qcow2")
BROKEN = DiskIoError("vol-00000000000000001", nospace=False, path="/srv/volumes/b.qcow2")


def test_the_reason_names_the_cause_and_the_disks() -> None:
    assert pause_reason([FULL]) == (
        f"host disk full (I/O error on {VOL}); resumes when space is freed")
    assert pause_reason([FULL, BOOT_FULL]).startswith(
        f"host disk full (I/O error on {VOL}, the boot disk)")
    assert pause_reason([BROKEN]) == ("host storage failed (I/O error on"
                                      " vol-00000000000000001); reboot or stop it")
    assert pause_reason([], "qemu status paused") == "paused by the hypervisor (qemu status paused)"


def test_a_vm_paused_on_full_disks_resumes_once_each_has_room() -> None:
    mib = 1024 * 1024
    free = {FULL.path: 100 * mib, BOOT_FULL.path: 10 * mib}
    assert may_resume([FULL], free.get, 64 * mib)
    assert not may_resume([FULL, BOOT_FULL], free.get, 64 * mib)  # one is still short
    assert may_resume([FULL, BOOT_FULL], free.get, 8 * mib)
    assert not may_resume([FULL], lambda p: None, 1)  # cannot tell: keep it paused
    assert not may_resume([BROKEN], lambda p: 10**12, 1)  # not a full disk: retry is futile
    assert not may_resume([], lambda p: 10**12, 1)  # paused for no disk of ours
    assert not may_resume([DiskIoError(VOL, nospace=True)], lambda p: 10**12, 1)  # no file


def test_a_paused_instance_can_be_rebooted_stopped_and_deleted_not_started() -> None:
    paused = InstanceState.PAUSED
    assert check_transition("v", paused, Action.REBOOT) is InstanceState.REBOOTING
    assert check_transition("v", paused, Action.STOP) is InstanceState.STOPPING
    assert check_transition("v", paused, Action.DELETE) is InstanceState.DELETING
    with pytest.raises(Conflict, match="paused by the hypervisor and resumes by itself"):
        check_transition("v", paused, Action.START)
