"""What every use case needs: the database, the settings, who is calling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cumulo.config import Settings
from cumulo.db.engine import Database
from cumulo.services.notifier import Notifier


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    AGENT = "agent"
    EDGE = "edge"  # the edge: reads the table of public addresses, nothing else


@dataclass(frozen=True)
class Principal:
    role: Role
    project_id: str | None = None  # members are bound to one project
    host_name: str | None = None  # agents are bound to one host

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass
class Services:
    db: Database
    settings: Settings
    notifier: Notifier
    # Where imported images are stored (`<state-dir>/images` for `cumulo up`); None: no imports.
    image_store: Path | None = None
    # 32 bytes that encrypt the EC2 access keys' secrets (see services.access_keys); None: no
    # access keys can be made or used.
    server_key: bytes | None = None
    # The time metering records transitions at (cumulo.services.metering): tests replace it
    # to script a scenario to the second without sleeping.
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def fqdn(svc: Services, name: str, project: str, zone: str) -> str:
    """An instance's name in DNS: <name>.<project>.<zone>.<cloud domain>."""
    return f"{name}.{project}.{zone}.{svc.settings.cloud_domain}"
