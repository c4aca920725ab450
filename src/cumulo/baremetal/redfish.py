"""cumulo's side of a BMC: a thin layer over sushy (the Redfish client library Ironic uses),
so the same code drives a real server's BMC and the emulator.

Every call opens its own short-timed connection: the conductor holds no session between
steps (a step may run in another API process next time). Errors come out as BmcError with one
line that says what happened, never a password.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import sushy
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exc

from cumulo.domain.baremetal import Facts, redfish_arch

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 20
POWER_WAIT_S = 60.0
T = TypeVar("T")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class BmcError(Exception):
    """The BMC did not answer, refused the credentials, or refused the request."""


class PowerAction(StrEnum):
    ON = "on"
    OFF = "off"  # pull the plug (ForceOff): what a cloud's "stop --force" does
    SOFT_OFF = "soft-off"  # ACPI: the OS shuts down, or not
    REBOOT = "reboot"  # ForceRestart (from off: powers on)


_RESET = {PowerAction.ON: sushy.RESET_ON, PowerAction.OFF: sushy.RESET_FORCE_OFF,
          PowerAction.SOFT_OFF: sushy.RESET_GRACEFUL_SHUTDOWN,
          PowerAction.REBOOT: sushy.RESET_FORCE_RESTART}
_BOOT = {"disk": sushy.BOOT_SOURCE_TARGET_HDD, "cd": sushy.BOOT_SOURCE_TARGET_CD,
         "pxe": sushy.BOOT_SOURCE_TARGET_PXE}


@dataclass(frozen=True)
class BmcAddress:
    url: str  # validated: domain.baremetal.redfish_url
    system: str  # validated: domain.baremetal.system_path
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never a password in a log line or traceback
        return f"BmcAddress({self.url!r}, {self.system!r}, user={self.username!r})"


class Bmc:
    def __init__(self, address: BmcAddress) -> None:
        self.address = address

    def facts(self) -> Facts:
        """Power state, architecture, CPUs, RAM and the largest disk, read over Redfish."""
        return self._call("inspect", _facts)

    def power_state(self) -> str:
        return self._call("read the power state", lambda s: str(s.power_state.value).lower())

    def power(self, action: PowerAction, wait_s: float = POWER_WAIT_S) -> str:
        """Do `action` and wait (up to wait_s) until the BMC reports its result; returns the
        power state. Idempotent: on when on, off when off, does nothing."""
        def act(system: Any) -> str:
            now = str(system.power_state.value).lower()
            if (action is PowerAction.ON and now == "on") or (
                    action in (PowerAction.OFF, PowerAction.SOFT_OFF) and now == "off"):
                return now
            system.reset_system(_RESET[action])
            want = {PowerAction.ON: "on", PowerAction.REBOOT: "on"}.get(action, "off")
            deadline = time.monotonic() + wait_s
            while True:
                system.refresh(force=True)
                now = str(system.power_state.value).lower()
                if now == want or time.monotonic() >= deadline:
                    return now
                time.sleep(0.5)
        return self._call(f"power {action.value}", act)

    def set_boot(self, device: str, once: bool = True) -> None:
        enabled = sushy.BOOT_SOURCE_ENABLED_ONCE if once else sushy.BOOT_SOURCE_ENABLED_CONTINUOUS
        self._call("set the boot device", lambda s: s.set_system_boot_options(
            target=_BOOT[device], enabled=enabled))

    def insert_media(self, image_url: str) -> None:
        def insert(system: Any) -> None:
            for media in _cd_drives(system):
                media.insert_media(image_url, inserted=True, write_protected=True)
                return
            raise BmcError("the BMC has no virtual CD drive")
        self._call("insert virtual media", insert)

    def eject_media(self) -> None:
        def eject(system: Any) -> None:
            for media in _cd_drives(system):
                if media.inserted:
                    media.eject_media()
        self._call("eject virtual media", eject)

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        a = self.address
        try:
            auth = (sushy_auth.BasicAuth(a.username, a.password or "") if a.username
                    else sushy_auth.BasicAuth("", ""))
            # One attempt, short timeouts: the conductor retries at its next pass, and a
            # silent BMC must not hold a conductor thread for sushy's default ~30 s.
            root = sushy.Sushy(a.url, auth=auth, verify=True, server_side_retries=1,
                               server_side_retries_delay=1, read_timeout=READ_TIMEOUT_S,
                               connect_timeout=CONNECT_TIMEOUT_S)
            return fn(root.get_system(a.system))
        except BmcError:
            raise
        except sushy_exc.AccessError as e:
            raise BmcError(f"the BMC at {a.url} refused the credentials ({what}: HTTP "
                           f"{e.status_code})") from None
        except sushy_exc.ResourceNotFoundError:
            raise BmcError(f"the BMC at {a.url} has no system {a.system}") from None
        except sushy_exc.ConnectionError as e:
            raise BmcError(f"the BMC at {a.url} did not answer ({what}): {_reason(e)}") from None
        except sushy_exc.HTTPError as e:
            raise BmcError(f"the BMC at {a.url} refused to {what}: HTTP {e.status_code} "
                           f"{(e.detail or '')[:200]}") from None
        except sushy_exc.SushyError as e:
            raise BmcError(f"the BMC at {a.url} answered what cumulo cannot read ({what}): "
                           f"{str(e)[:200]}") from None


def _facts(system: Any) -> Facts:
    procs = system.processors.get_members()
    vcpus = sum(p.total_threads for p in procs if p.total_threads) or None
    first = procs[0] if procs else None
    arch = redfish_arch(_value(first.processor_architecture) if first else None,
                        _value(first.instruction_set) if first else None)
    # TotalSystemMemoryGiB may be fractional; sushy's own field truncates to whole GiB.
    gib = (system.json.get("MemorySummary") or {}).get("TotalSystemMemoryGiB")
    ram_mib = round(float(gib) * 1024) if isinstance(gib, int | float) else None
    return Facts(arch=arch, vcpus=vcpus, ram_mib=ram_mib, disk_gib=_disk_gib(system),
                 power_state=str(system.power_state.value).lower(), mac=_mac(system))


def _mac(system: Any) -> str | None:
    """The first NIC's MAC from EthernetInterfaces (None: the BMC does not say, or says
    nothing that is a MAC: the node then gets no network)."""
    try:
        summary = system.ethernet_interfaces.summary
    except (sushy_exc.SushyError, AttributeError):
        return None
    for mac in sorted(summary or {}):
        if isinstance(mac, str) and _MAC.match(mac.lower()):
            return mac.lower()
    return None


def _disk_gib(system: Any) -> int | None:
    """The largest disk, from SimpleStorage, else Storage (BMCs offer one or the other)."""
    reads: tuple[Callable[[], Any], ...] = (lambda: system.simple_storage.max_size_bytes,
                                            lambda: system.storage.drives_max_size_bytes)
    for read in reads:
        try:
            size = read()
        except (sushy_exc.SushyError, AttributeError):
            continue
        if size:
            return int(size) // 1024**3
    return None


def _cd_drives(system: Any) -> list[Any]:
    try:
        drives = system.virtual_media.get_members()
    except sushy_exc.MissingAttributeError:  # older BMCs: virtual media under the Manager
        drives = [m for mgr in system.managers for m in mgr.virtual_media.get_members()]
    return [d for d in drives if {"CD", "DVD"} & {str(_value(t)) for t in d.media_types}]


def _value(enum: Any) -> Any:
    return getattr(enum, "value", enum)


def _reason(e: Exception) -> str:
    text = str(e)
    m = _ERRNO.search(text)
    if m:
        return m.group(1).strip().lower()
    if "timed out" in text.lower():
        return "timed out"
    return text[-200:]
