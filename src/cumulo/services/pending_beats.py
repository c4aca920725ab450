"""Agents' heartbeats noted in memory, for the API's flusher to write together.

Every long-poll answer and report is a heartbeat (services.hosts.heartbeat), written at most
every HEARTBEAT_WRITE_EVERY per host: with 1,000 idle hosts polling every 4 s, 250 write
transactions a second, 13 % of an idle API's CPU. While an API process runs its flusher
(api/app.py), the beat of a host it already wrote `up` is only noted here, and the flusher
writes every noted beat in one statement each FLUSH_EVERY_S (hosts.write_heartbeats). A
host's first beat in a process (or its first since this process marked it down) is still
written at once, with its coming back: that one changes what users see.
"""

from __future__ import annotations

import threading

# Well inside HOST_DOWN_AFTER (12 s) less the polls' 4 s: a noted beat is in the database
# before any sweep could take its host for silent.
FLUSH_EVERY_S = 1.0


class PendingBeats:
    """Host ids whose beat waits for the flusher; none while no flusher runs (a process
    without one, such as a test calling the services, writes each beat itself)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] | None = None

    def start(self) -> None:
        with self._lock:
            self._ids = set()

    def note(self, host_id: str) -> bool:
        """Noted for the flusher (False: no flusher runs; write it now)."""
        with self._lock:
            if self._ids is None:
                return False
            self._ids.add(host_id)
            return True

    def take(self, *, stop: bool = False) -> list[str]:
        """The noted ids, forgotten here; with `stop`, later beats are written at once."""
        with self._lock:
            ids = sorted(self._ids or ())
            self._ids = None if stop else set()
            return ids
