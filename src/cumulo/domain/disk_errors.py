"""Why the hypervisor paused a VM on a disk write error, and when it may run again.

A disk whose write-error policy is `stop` (the default: see the volume types in the config)
pauses its VM when a write fails, instead of failing the write in the guest: nothing the
guest wrote is lost, and the write completes when the VM runs again. The usual cause is a
full host filesystem (ENOSPC): the VM is then resumed as soon as that filesystem has room
again. A volume attached over the network (NBD) whose storage host is unreachable pauses
it the same way: the write is tried again from time to time (the agent resumes the VM, and
QEMU pauses it again while the export is still away), so the VM runs on by itself once the
storage host serves the export again. Any other I/O error (a failing host disk) leaves it
paused until the user reboots or stops it: retrying would most likely fail again.
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
    remote: bool = False  # a network (NBD) volume: its storage host did not answer


def _names(errors: Sequence[DiskIoError]) -> str:
    return ", ".join("the boot disk" if e.disk == BOOT_DISK else e.disk for e in errors)


def pause_reason(errors: Sequence[DiskIoError], hypervisor_status: str = "") -> str:
    """The one line shown with a paused instance: what happened, to which disk."""
    full = [e for e in errors if e.nospace]
    remote = [e for e in errors if e.remote and not e.nospace]
    failed = [e for e in errors if not e.nospace and not e.remote]
    parts = []
    if full:
        parts.append(f"host disk full (I/O error on {_names(full)}); resumes when space is"
                     " freed")
    if remote:
        parts.append(f"storage host unreachable (I/O error on network volume "
                     f"{_names(remote)}); resumes when it is back")
    if failed:
        parts.append(f"host storage failed (I/O error on {_names(failed)}); reboot or stop it")
    if parts:
        return "; ".join(parts)
    return f"paused by the hypervisor ({hypervisor_status or 'unknown cause'})"


def may_resume(errors: Sequence[DiskIoError], free_bytes: Callable[[str], int | None],
               min_free_bytes: int) -> bool:
    """Whether a VM paused for these errors can run again: every error was a full disk or a
    network volume, and each full file's filesystem has at least `min_free_bytes` free now
    (`free_bytes` answers None when it cannot tell: then not). A network volume's export
    cannot be seen from here: the caller tries it now and then (see `remote`)."""
    if not errors:
        return False
    for e in errors:
        if e.remote and not e.nospace:
            continue
        if not e.nospace or not e.path:
            return False
        free = free_bytes(e.path)
        if free is None or free < min_free_bytes:
            return False
    return True


def remote(errors: Sequence[DiskIoError]) -> bool:
    """Whether any of these errors is a network volume's (resuming is then a try: QEMU pauses
    the VM again at once while its storage host is away)."""
    return any(e.remote and not e.nospace for e in errors)
