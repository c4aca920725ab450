"""A fake BMC recording the Redfish calls, and the node it deploys and cleans: the conductor's
deploy and cleaning tests (tests/unit/services/test_baremetal_deploy.py, test_baremetal_clean.py)
share them; each module wraps the two set-ups in its own fixtures."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import ClassVar

from sqlalchemy import select, update

from cumulo.baremetal.redfish import Bmc, BmcError, PowerAction
from cumulo.config import BaremetalSettings
from cumulo.db.tables import BaremetalNodeRow
from cumulo.services import baremetal_conductor as conductor
from cumulo.services import baremetal_deploy as deploy
from cumulo.services import baremetal_nodes as nodes
from cumulo.services import instances
from cumulo.services.context import Services
from tests.baremetal_support import PASSWORD, USER
from tests.conftest import ADMIN

MEDIA, PROVISION = "http://127.0.0.1:8999", "http://10.0.2.100"
ISO_URL = re.compile(rf"^{MEDIA}/v1/baremetal/deploy/([0-9a-f]{{64}})/deploy\.iso\Z")


class FakeBmc(Bmc):
    """A BMC that records what it is asked (and fails where told to)."""

    calls: ClassVar[list[str]] = []
    power_now: ClassVar[str] = "off"
    fail_on: ClassVar[str | None] = None

    @classmethod
    def reset(cls) -> type[FakeBmc]:
        cls.calls, cls.power_now, cls.fail_on = [], "off", None
        return cls

    def power(self, action: PowerAction, wait_s: float = 0) -> str:
        self._did(f"power {action.value}")
        FakeBmc.power_now = "on" if action in (PowerAction.ON, PowerAction.REBOOT) else "off"
        return FakeBmc.power_now

    def insert_media(self, image_url: str) -> None:
        self._did(f"insert {image_url}")

    def eject_media(self) -> None:
        self._did("eject")

    def set_boot(self, device: str, once: bool = True) -> None:
        self._did(f"boot {device} {'once' if once else 'always'}")

    def _did(self, what: str) -> None:
        if FakeBmc.fail_on is not None and what.startswith(FakeBmc.fail_on):
            raise BmcError(f"the BMC at {self.address.url} refused to {what}: HTTP 500")
        FakeBmc.calls.append(what)


def deploying_node(svc: Services, keys: Sequence[str] = (), user_data: bytes | None = None
                   ) -> Services:
    """A node `bm-1` in `deploying` with the instance `metal` (bm1.tiny, image tiny; with
    these keys and user-data)."""
    svc.server_key = secrets.token_bytes(32)
    svc.settings.baremetal = BaremetalSettings(media_url=MEDIA, provision_url=PROVISION)
    nodes.enroll(svc, ADMIN, nodes.Enrollment(
        name="bm-1", zone="local-1a", redfish_url="http://127.0.0.1:9", system="n1",
        arch="x86_64", vcpus=1, ram_mib=256, disk_gib=2, username=USER, password=PASSWORD))
    with svc.db.session() as s:
        s.execute(update(BaremetalNodeRow).values(state="available"))
    instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="metal", image="tiny", type="bm1.tiny", keys=list(keys), user_data=user_data))
    return svc


def run_pass(svc: Services) -> dict[str, str]:
    return conductor.run_pass(svc, FakeBmc)


def token(bmc: type[FakeBmc]) -> str:
    """The token of the last ISO inserted."""
    [url] = [c.removeprefix("insert ") for c in bmc.calls if c.startswith("insert ")][-1:]
    m = ISO_URL.match(url)
    assert m, url
    return m.group(1)


def node(svc: Services) -> BaremetalNodeRow:
    with svc.db.session() as s:
        row: BaremetalNodeRow | None = s.scalar(select(BaremetalNodeRow))
        assert row is not None
        s.expunge(row)
        return row


def clean(svc: Services, bmc: type[FakeBmc]) -> str:
    """Run the cleaning of a node whose instance was deleted, its wipe reported ok by the
    node (as its ramdisk would); returns the cleaning's token."""
    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "cleaning"}
    wipe = token(bmc)
    assert bmc.calls == ["power off", f"insert {MEDIA}/v1/baremetal/deploy/{wipe}/deploy.iso",
                         "boot cd once", "power on"]
    deploy.report(svc, wipe, b"ok")
    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "available"}
    assert bmc.calls == ["power off", "eject"]
    return wipe
