"""`cumulo api`: an API process alone, for a cloud whose hosts run `cumulo agent` elsewhere.

Several may serve one PostgreSQL database: each wakes the long-polls of the others through
LISTEN/NOTIFY (services.pg_bus), and clients and agents given several URLs fail over between
them. It writes `DIR/client.toml` (its URL and an admin token) like `cumulo up`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cumulo.allinone.paths import StatePaths
from cumulo.allinone.up import register_images, server_key, write_client_config
from cumulo.api import server
from cumulo.api.app import create_app
from cumulo.config import load_settings
from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.domain.errors import InvalidInput
from cumulo.services.context import Services
from cumulo.services.notifier import Notifier
from cumulo.services.pg_bus import PgBus


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8750' or '[::1]:8750' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 1 <= number <= 65535:
        raise InvalidInput(f"invalid --listen {text!r}: an IP address and a port, e.g. "
                           "127.0.0.1:8750", code="invalid_input")
    return host, number


def run(database_url: str, listen: str, state_dir: Path, config: Path | None) -> None:
    host, port = parse_listen(listen)
    paths = StatePaths(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(config or paths.config)
    db = Database(database_url)
    upgrade(db)
    shown = f"[{host}]" if ":" in host else host
    write_client_config(paths, db, f"http://{shown}:{port}")
    notifier = Notifier()
    svc = Services(db=db, settings=settings, notifier=notifier, image_store=paths.root / "images",
                   server_key=server_key(settings, paths))
    register_images(svc)
    bus = None
    if not db.in_process:
        bus = PgBus(database_url, notifier.deliver)
        notifier.share_with(bus.publish)
        bus.start()
    try:
        server.serve(create_app(svc), notifier, port, host=host)
    finally:
        if bus is not None:
            bus.stop()
        db.dispose()
