"""Where an all-in-one cloud keeps its files. One state dir = one cloud."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8750


def default_state_dir() -> Path:
    env = os.environ.get("CUMULO_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/cumulo")
    return Path.home() / ".local" / "state" / "cumulo"


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "cumulo.toml"

    @property
    def database(self) -> Path:
        return self.root / "cumulo.db"

    @property
    def client_config(self) -> Path:
        return self.root / "client.toml"

    @property
    def pidfile(self) -> Path:
        return self.root / "up.pid"

    @property
    def server_key(self) -> Path:
        """Encrypts the EC2 access keys' secrets (services.access_keys)."""
        return self.root / "server.key"

    @property
    def log(self) -> Path:
        return self.root / "cumulo.log"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    def hosts(self) -> list[Path]:
        base = self.root / "hosts"
        return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file readable by its owner only (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def pid_alive(pid: int, must_contain: str) -> bool:
    """True when `pid` runs and its command line contains `must_contain` (PID reuse guard)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return must_contain.encode() in cmdline
