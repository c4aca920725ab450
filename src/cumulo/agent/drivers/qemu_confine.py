"""Who a VM's QEMU runs as, and which files it may open.

One uid per VM, taken from a range (no /etc/passwd entry needed; gid = uid, no other group).
A per-VM uid makes "a QEMU opens only its own files" plain file ownership: a file the agent
hands to a VM (its boot disk, seed, console log, pidfile, an attached volume, a snapshot target
while the copy runs) is chowned to that uid, mode 0600/0400, and back to root when taken away;
nothing else on the host is the VM's. One shared uid for every VM would leave every disk of
every VM readable by each of them.

Claims are machine-wide (several hosts' agents may run on one machine): `REGISTRY/<uid>` is a
symlink to the VM's runtime directory, made under an flock; a claim whose directory is gone
(or now records another uid) is stale and free again. The VM's directory keeps its uid in the
file `uid`, so a restarted agent, or the next start of a stopped VM, finds the same one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cumulo.agent.drivers.base import DriverError

# systemd's UIDS-GIDS.md leaves 1879048192..2147483647 unused by any convention.
DEFAULT_UID_BASE = 1_900_000_000
DEFAULT_UID_COUNT = 65536
DEFAULT_REGISTRY = Path("/run/cumulo/vm-uids")


@dataclass(frozen=True)
class UidPool:
    base: int = DEFAULT_UID_BASE
    count: int = DEFAULT_UID_COUNT
    registry: Path = DEFAULT_REGISTRY

    def __post_init__(self) -> None:
        if self.base < 1000 or self.count < 1 or self.base + self.count > 2**31 - 1:
            raise DriverError(
                f"invalid QEMU uid range {self.base}+{self.count}: it must lie within"
                f" 1000..{2**31 - 2}")

    def claim(self, vm_dir: Path) -> int:
        """The uid of the VM whose runtime directory is `vm_dir` (its own one if it has one)."""
        with self._locked():
            recorded = read_uid(vm_dir)
            if recorded is not None and self._in_range(recorded):
                owner = self._owner(recorded)
                if owner is None or owner == vm_dir:
                    self._take(recorded, vm_dir)
                    return recorded
            taken = self._claimed()
            for uid in range(self.base, self.base + self.count):
                if uid not in taken or self._owner(uid) is None:
                    self._take(uid, vm_dir)
                    return uid
        raise DriverError(
            f"no free QEMU uid: all {self.count} uids from {self.base} are in use on this machine")

    def release(self, vm_dir: Path) -> None:
        uid = read_uid(vm_dir)
        if uid is None:
            return
        with self._locked():
            if self._owner(uid) == vm_dir:
                (self.registry / str(uid)).unlink(missing_ok=True)

    def _in_range(self, uid: int) -> bool:
        return self.base <= uid < self.base + self.count

    def _claimed(self) -> set[int]:
        return {int(n) for n in os.listdir(self.registry) if n.isdigit()}

    def _owner(self, uid: int) -> Path | None:
        """The runtime dir holding `uid`, or None when its claim is stale (the dir is gone).

        Only the registry is read: the claiming dir may belong to another host of this
        machine (simulated hosts share it), whose files this host never opens. A dir that
        since moved to another uid keeps its old claim too (a uid of the range wasted, until
        that VM is deleted)."""
        try:
            target = Path(os.readlink(self.registry / str(uid)))
        except OSError:
            return None
        return target if target.is_dir() else None

    def _take(self, uid: int, vm_dir: Path) -> None:
        (vm_dir / "uid").write_text(f"{uid}\n")
        link = self.registry / str(uid)
        link.unlink(missing_ok=True)
        link.symlink_to(vm_dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.registry.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.registry / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def read_uid(vm_dir: Path) -> int | None:
    try:
        return int((vm_dir / "uid").read_text().strip())
    except (OSError, ValueError):
        return None


# -- files handed to a VM --------------------------------------------------------------------
# `<vm dir>/grants` lists what was chowned to the VM, so that destroy (or a later start) gives
# back to root what a crash left behind: a volume file must never stay owned by a uid that the
# next VM may get.


def grant(vm_dir: Path, uid: int, path: Path, key: str, *, writable: bool = True) -> None:
    """Make `path` (a regular file) the VM's, recorded under `key` ("boot", a volume id, ...):
    owner uid:uid, mode 0600 (0400 read-only)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise DriverError(f"cannot hand {path} to a VM: not a regular file")
    _record(vm_dir, key, path)
    os.chown(path, uid, uid, follow_symlinks=False)
    os.chmod(path, 0o600 if writable else 0o400)


def revoke(vm_dir: Path, key: str) -> None:
    """Give the file recorded under `key` back to root (0600); absent is fine."""
    path = granted(vm_dir).get(key)
    if path is not None:
        _give_back(path, read_uid(vm_dir))
        _record(vm_dir, key, None)


def revoke_all(vm_dir: Path, keep: dict[str, Path] | None = None) -> None:
    """Give back every file handed to the VM but those in `keep` (key -> the same path)."""
    uid = read_uid(vm_dir)
    for key, path in granted(vm_dir).items():
        if keep is None or keep.get(key) != path:
            _give_back(path, uid)
            _record(vm_dir, key, None)


def granted(vm_dir: Path) -> dict[str, Path]:
    try:
        raw = json.loads((vm_dir / "grants").read_text())
        return {str(k): Path(v) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _give_back(path: Path, uid: int | None) -> None:
    """Root's again, unless another VM has it by now (a volume attached elsewhere since)."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
            os.chown(path, 0, 0, follow_symlinks=False)
            os.chmod(path, 0o600)


def _record(vm_dir: Path, key: str, path: Path | None) -> None:
    if not vm_dir.is_dir():
        return
    grants = granted(vm_dir)
    if path is None:
        grants.pop(key, None)
    else:
        grants[key] = path
    tmp = vm_dir / "grants.tmp"
    tmp.write_text(json.dumps({k: str(v) for k, v in grants.items()}))
    tmp.replace(vm_dir / "grants")


def unreachable(path: Path) -> Path | None:
    """The first directory above `path` that a user other than its owner cannot enter."""
    for parent in Path(path).absolute().parents:
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return parent
        if not mode & stat.S_IXOTH:
            return parent
    return None


def check_reachable(vm_id: str, uid: int, paths: list[Path]) -> None:
    for p in paths:
        blocked = unreachable(p)
        if blocked is not None:
            raise DriverError(
                f"cannot start {vm_id}: its QEMU runs as uid {uid} and cannot reach {p}:"
                f" {blocked} is not searchable by other users (chmod o+x {blocked})")
