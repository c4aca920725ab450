"""Bare-metal nodes: states, the allowed moves, the checks of what an operator enrolls, and
the pure rule that turns what a BMC reported (inspection) into the node's next state.

States follow OpenStack Ironic's provision states:

  enroll ──BMC answers──► manageable ──► inspecting ──facts match──► available
     │                        │              │                          │
     └────────── BMC silent / facts differ ──┴──► error (last_error)    ▼
  any but deploying/active ──delete──► deleting ──BMC powers off──► (gone)
  available ──instance create (bm1.*)──► deploying ──the deploy's steps──► active
                                             └──report failed / timeout / BMC──► error
  deploying/active/error ──instance delete──► cleaning ──instance gone, disk wiped──► available
                                                  └──wipe failed / timeout / BMC──► error
  error ──operator's retry──► cleaning (if that failed) or enroll (not with an instance)

A cleaning's steps are the same (services.baremetal_clean_steps), with the ISO in wipe mode.
A deploy's steps (DeployStep, recorded on the node): booting (a one-time token issued, the
deploy ISO inserted, boot once from CD, power on) → waiting (for the deploy ramdisk's report)
→ finishing (media ejected, boot from disk, power cycle) → the node `active`.

The conductor (services.baremetal_conductor) moves nodes along; each move is one idempotent
step recorded in the database, so a restart resumes where it stopped.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from cumulo.domain.arch import Arch
from cumulo.domain.errors import InvalidInput


class NodeState(StrEnum):
    ENROLL = "enroll"
    MANAGEABLE = "manageable"
    INSPECTING = "inspecting"
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    ACTIVE = "active"
    DELETING = "deleting"
    CLEANING = "cleaning"
    ERROR = "error"


# The states in which the conductor has a step to take.
CONDUCTOR_STATES = (NodeState.ENROLL, NodeState.MANAGEABLE, NodeState.INSPECTING,
                    NodeState.DEPLOYING, NodeState.DELETING, NodeState.CLEANING)


class DeployStep(StrEnum):
    """The deploy (or cleaning) step a node in `deploying` (`cleaning`) did last (None: not
    started)."""

    BOOTING = "booting"  # token issued; media in, boot once from CD, power on (under way)
    WAITING = "waiting"  # the node runs the deploy ramdisk: its report is awaited
    FINISHING = "finishing"  # reported ok: media out, boot from disk, power cycle (under way)


# The start of the last_error of a node whose deploy failed (services.baremetal_deploy_steps).
DEPLOY_FAILED = "deploy: "
REPORT_OK = "ok"
REPORT_ERROR = "error="
MAX_REPORT = 400
_REPORT_TEXT = re.compile(r"^[\x20-\x7e]*\Z")  # printable ASCII (the ramdisk's shell writes it)


def deploy_report(body: bytes) -> str:
    """A deploy ramdisk's report as recorded: "ok", or "error=<why>" (one printable line)."""
    text = body.decode("ascii", errors="replace").strip()
    if text == REPORT_OK or (text.startswith(REPORT_ERROR) and len(text) > len(REPORT_ERROR)
                             and len(text) <= MAX_REPORT and _REPORT_TEXT.match(text)):
        return text
    raise InvalidInput(f"invalid deploy report: expected 'ok' or 'error=<why>' (printable, at "
                       f"most {MAX_REPORT} characters)", code="invalid_deploy_report")


def report_failure(report: str) -> str | None:
    """Why a recorded report failed the deploy (None: it says ok)."""
    return None if report == REPORT_OK else "the deploy ramdisk reported: " + report.removeprefix(
        REPORT_ERROR)
# A node that runs (or is being given) a user's server is not deleted under it.
UNDELETABLE = (NodeState.DEPLOYING, NodeState.ACTIVE, NodeState.CLEANING)

MAX_VCPUS = 4096
MAX_RAM_MIB = 64 * 1024 * 1024  # 64 TiB
MAX_DISK_GIB = 1024 * 1024  # 1 PiB
MAX_USERNAME = 64
MAX_PASSWORD = 256
MAX_URL = 255
_SYSTEM_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}\Z")
_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_PRINTABLE = re.compile(r"^[\x21-\x7e]*\Z")  # printable ASCII, no space


def redfish_url(text: str) -> str:
    """A BMC's Redfish address: http(s)://host[:port] (a trailing '/' is dropped), nothing
    else (no credentials, path, query or fragment: the service root is /redfish/v1)."""
    bad = InvalidInput(f"invalid Redfish URL {text[:100]!r}: expected http(s)://HOST[:PORT]",
                       code="invalid_redfish_url")
    if len(text) > MAX_URL or not _PRINTABLE.match(text):
        raise bad
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError:
        raise bad from None
    if (u.scheme not in ("http", "https") or u.username is not None or u.password is not None
            or u.path not in ("", "/") or u.query or u.fragment or not u.hostname):
        raise bad
    host = u.hostname
    if not _HOSTNAME.match(host):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise bad from None
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{u.scheme}://{host}" + (f":{port}" if port is not None else "")


def system_path(text: str) -> str:
    """The Redfish path of a node's System from its id ("1", "System.Embedded.1") or its path
    (/redfish/v1/Systems/ID)."""
    prefix = "/redfish/v1/Systems/"
    ident = text[len(prefix):] if text.startswith(prefix) else text
    if not _SYSTEM_ID.match(ident) or ident in (".", ".."):
        raise InvalidInput(f"invalid Redfish system {text[:140]!r}: an id of 1-128 characters "
                           "A-Z a-z 0-9 . _ ~ - (or /redfish/v1/Systems/ID)",
                           code="invalid_redfish_system")
    return prefix + ident


def bmc_username(text: str) -> str:
    if not 1 <= len(text) <= MAX_USERNAME or not _PRINTABLE.match(text) or ":" in text:
        raise InvalidInput(f"invalid BMC username: 1-{MAX_USERNAME} printable characters, "
                           "no space or ':'", code="invalid_bmc_username")
    return text


def bmc_password(text: str) -> str:
    # Spaces are fine in a password; control characters (a newline pasted in) are not.
    if not 1 <= len(text) <= MAX_PASSWORD or not all(" " <= c <= "~" for c in text):
        raise InvalidInput(f"invalid BMC password: 1-{MAX_PASSWORD} printable ASCII characters "
                           "(the file's trailing newline is dropped)",
                           code="invalid_bmc_password")
    return text


@dataclass(frozen=True)
class Facts:
    """What a BMC reports about its machine; None where it does not say."""

    arch: str | None
    vcpus: int | None
    ram_mib: int | None
    disk_gib: int | None
    power_state: str | None
    mac: str | None = None  # the NIC's (the first EthernetInterface with a valid MAC)


@dataclass(frozen=True)
class Enrolled:
    arch: Arch
    vcpus: int
    ram_mib: int
    disk_gib: int


def mismatches(enrolled: Enrolled, facts: Facts) -> list[str]:
    """How what the BMC reports differs from what the operator enrolled ([]: it matches).

    CPUs, architecture and RAM must be what was enrolled; the largest disk must hold at least
    the enrolled size (an operator may offer less than the disk has). A fact the BMC does not
    report is taken on the operator's word."""
    out = []
    if facts.arch is not None and facts.arch != enrolled.arch.value:
        out.append(f"arch {facts.arch} (enrolled {enrolled.arch.value})")
    if facts.vcpus is not None and facts.vcpus != enrolled.vcpus:
        out.append(f"vcpus {facts.vcpus} (enrolled {enrolled.vcpus})")
    if facts.ram_mib is not None and facts.ram_mib != enrolled.ram_mib:
        out.append(f"ram {facts.ram_mib} MiB (enrolled {enrolled.ram_mib})")
    if facts.disk_gib is not None and facts.disk_gib < enrolled.disk_gib:
        out.append(f"disk {facts.disk_gib} GiB (enrolled {enrolled.disk_gib})")
    return out


def after_inspection(enrolled: Enrolled, facts: Facts) -> tuple[NodeState, str | None]:
    """The state an inspected node moves to, and the error that says why when it is `error`."""
    diff = mismatches(enrolled, facts)
    if diff:
        return NodeState.ERROR, "inspection: the BMC reports " + ", ".join(diff)
    return NodeState.AVAILABLE, None


# The start of the last_error of a node whose cleaning failed (services.baremetal_conductor).
CLEANING_FAILED = "cleaning: "


def after_retry(last_error: str | None) -> NodeState:
    """Where an operator's retry sends a node in `error`: back to cleaning when that is what
    failed (its machine may still run the last tenant's system: it is powered off again),
    else to `enroll` (its BMC checked and the machine inspected again)."""
    if last_error is not None and last_error.startswith(CLEANING_FAILED):
        return NodeState.CLEANING
    return NodeState.ENROLL


def redfish_arch(architecture: str | None, instruction_set: str | None) -> str | None:
    """cumulo's arch name for a Redfish Processor's ProcessorArchitecture / InstructionSet."""
    if instruction_set == "x86-64" or (architecture == "x86" and instruction_set is None):
        return Arch.X86_64.value
    if instruction_set == "ARM-A64" or (architecture == "ARM" and instruction_set is None):
        return Arch.ARM64.value
    if architecture is None and instruction_set is None:
        return None
    return f"{architecture or '?'}/{instruction_set or '?'}"
