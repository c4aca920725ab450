"""Why the hypervisor paused a VM on a disk write error, and when it may run again.

A disk whose write-error policy is `stop` (the default: see the volume types in the config)
pauses its VM when a write fails, instead of failing the write in the guest: nothing the
guest wrote is lost, and the write completes when the VM runs again. The usual cause is a
full host filesystem (ENOSPC): the VM is then resumed as soon as that filesystem has room
again. Any other I/O error (a failing host disk) leaves it paused until the user reboots or
stops it: retrying would most likely fail again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

BOOT_DISK = "root"  # the boot disk's name in DiskIoError.disk (volumes go by their id)

# What a disk does when the host cannot write it: pause the VM, or fail the guest's write (EIO).
WriteErrorPolicy = Literal["stop", "report"]


@dataclass(frozen=True)
class DiskIoError:
    """A disk whose last write failed on the host, as the hypervisor reports it."""

    disk: str  # BOOT_DISK or a volume id
    nospace: bool  # the host's filesystem is full (ENOSPC); False: another I/O error
    path: str = ""  # the host file that could not be written ("" unknown)


def _names(errors: Sequence[DiskIoError]) -> str:
    return ", ".join("the boot disk" if e.disk == BOOT_DISK else e.disk for e in errors)


def pause_reason(errors: Sequence[DiskIoError], hypervisor_status: str = "") -> str:
    """The one line shown with a paused instance: what happened, to which disk."""
    full = [e for e in errors if e.nospace]
    failed = [e for e in errors if not e.nospace]
    parts = []
    if full:
        parts.append(f"host disk full (I/O error on {_names(full)}); resumes when space is"
                     " freed")
    if failed:
        parts.append(f"host storage failed (I/O error on {_names(failed)}); reboot or stop it")
    if parts:
        return "; ".join(parts)
    return f"paused by the hypervisor ({hypervisor_status or 'unknown cause'})"


def may_resume(errors: Sequence[DiskIoError], free_bytes: Callable[[str], int | None],
               min_free_bytes: int) -> bool:
    """Whether a VM paused for these errors can run again: every error was a full disk, and
    each of those files' filesystems has at least `min_free_bytes` free now (`free_bytes`
    answers None when it cannot tell: then not)."""
    if not errors:
        return False
    for e in errors:
        if not e.nospace or not e.path:
            return False
        free = free_bytes(e.path)
        if free is None or free < min_free_bytes:
            return False
    return True
