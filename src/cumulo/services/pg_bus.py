"""Wake-ups between API processes that share one PostgreSQL database (LISTEN/NOTIFY).

Each API process keeps its own Notifier: the long-polls of the hosts connected to it, the
versions it answers with, its cached assignments and its DNS journal. A write through one
process must wake, at once, the hosts that poll another. So every process publishes what its
Notifier was told (after the commit, as the Notifier is told) on one channel, and applies what
the others publish as if its own services had said it. A process skips its own messages.

Messages are batched: a publisher thread sends what queued up meanwhile in as few NOTIFYs as
fit PostgreSQL's 8,000-byte payload. A message that does not fit alone (a huge DNS change) is
sent as "rebuild": every process then forgets the affected host's cached assignments.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

log = structlog.get_logger("cumulo.bus")

CHANNEL = "cumulo_wake"
MAX_PAYLOAD = 7900  # PostgreSQL refuses 8,000 bytes and more
_STOP = object()

Message = dict[str, Any]


def _dsn(url: str) -> str:
    """A psycopg connection string from the SQLAlchemy URL the API was given."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class PgBus:
    """Publish and receive Notifier messages. `deliver(message)` runs on the listener thread
    for every message of another process."""

    def __init__(self, url: str, deliver: Callable[[Message], None]) -> None:
        self.origin = secrets.token_hex(6)
        self._dsn = _dsn(url)
        self._deliver = deliver
        self._out: queue.Queue[object] = queue.Queue()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._listen, name="bus-listen", daemon=True),
                         threading.Thread(target=self._publish, name="bus-publish", daemon=True)]
        self._listening = threading.Event()

    def start(self) -> None:
        for t in self._threads:
            t.start()
        # Messages published before LISTEN is in place would be lost to this process.
        self._listening.wait(10)

    def stop(self) -> None:
        self._stopped.set()
        self._out.put(_STOP)
        for t in self._threads:
            t.join(timeout=5)

    def publish(self, message: Message) -> None:
        self._out.put(message)

    # --- the threads --------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    while not self._stopped.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._received(note.payload)
            except psycopg.Error as e:
                # A lost connection may have lost messages: ask for everything again.
                log.warning("bus_listen_failed", error=str(e))
                self._deliver({"k": "all"})
                self._stopped.wait(1.0)

    def _received(self, payload: str) -> None:
        try:
            batch = json.loads(payload)
        except ValueError:
            return
        if batch.get("o") == self.origin:
            return
        for message in batch.get("m", []):
            try:
                self._deliver(message)
            except Exception as e:  # one bad message must not stop the listener
                log.warning("bus_message_failed", error=str(e), message=str(message)[:200])

    def _publish(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while True:
            first = self._out.get()
            if first is _STOP:
                break
            pending = [first]
            while not self._out.empty() and len(pending) < 500:
                item = self._out.get_nowait()
                if item is _STOP:
                    self._out.put(_STOP)
                    break
                pending.append(item)
            for payload in self._payloads([m for m in pending if isinstance(m, dict)]):
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self._dsn, autocommit=True)
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                except psycopg.Error as e:
                    log.warning("bus_publish_failed", error=str(e))
                    conn = None
        if conn is not None:
            conn.close()

    def _payloads(self, messages: list[Message]) -> list[str]:
        """The messages as NOTIFY payloads of at most MAX_PAYLOAD bytes each."""
        out: list[str] = []
        batch: list[str] = []
        size = 0
        head = len(json.dumps({"o": self.origin, "m": []}))
        for m in messages:
            text = json.dumps(m, separators=(",", ":"))
            if head + len(text) + 1 > MAX_PAYLOAD:
                text = json.dumps({"k": "all"})
            if batch and head + size + len(text) + 1 > MAX_PAYLOAD:
                out.append(self._wrap(batch))
                batch, size = [], 0
            batch.append(text)
            size += len(text) + 1
        if batch:
            out.append(self._wrap(batch))
        return out

    def _wrap(self, texts: list[str]) -> str:
        return '{"o":"' + self.origin + '","m":[' + ",".join(texts) + "]}"
