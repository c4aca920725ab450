"""The hosts' beats over UDP (cumulo.beats), heard by a thread of the API process at the
address and port number of its HTTP server, whatever its event loop is doing.

A datagram counts when it is well formed, newer than the host's last one heard here, and
signed with one of the host's agent tokens; it is then noted for the heartbeat flusher
(services.hosts.beat_heard). Anything else is dropped without a word: nothing answers a
datagram, so a forged or replayed one changes nothing and tells its sender nothing.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from cumulo import beats
from cumulo.services import hosts
from cumulo.services.context import Services

log = structlog.get_logger()

# A host's keys are read again after this long: a token removed with its host stops making
# beats count within it.
KEYS_TTL_S = 60.0
# Names looked up and kept (unknown ones too, so that a flood of made-up names costs one read
# each per KEYS_TTL_S); past this many, all are forgotten and read again.
MAX_NAMES = 10_000
_RECV_TIMEOUT_S = 0.5  # how soon the thread sees that it must stop


class BeatListener:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._keys: dict[str, tuple[float, tuple[str, list[bytes]] | None]] = {}
        self._seq: dict[str, int] = {}  # name -> the newest beat heard (verified hosts only)

    def hear(self, data: bytes) -> bool:
        """One datagram: True when it counted as its host's heartbeat."""
        parsed = beats.decode(data)
        if parsed is None:
            return False
        name, seq, mac = parsed
        if seq <= self._seq.get(name, -1):
            return False  # played again, or overtaken by a newer one
        found = self._keys_of(name)
        if found is None:
            return False
        host_id, keys = found
        if not any(beats.verify(name, seq, mac, key) for key in keys):
            return False
        self._seq[name] = seq
        return hosts.beat_heard(self._svc, host_id)

    def _keys_of(self, name: str) -> tuple[str, list[bytes]] | None:
        now = time.monotonic()
        cached = self._keys.get(name)
        if cached is not None and now - cached[0] < KEYS_TTL_S:
            return cached[1]
        if len(self._keys) >= MAX_NAMES:
            self._keys.clear()
        found = hosts.beat_keys(self._svc, name)
        self._keys[name] = (now, found)
        return found

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.settimeout(_RECV_TIMEOUT_S)
        while not stop.is_set():
            try:
                data = sock.recv(beats.MAX_BYTES + 1)
            except TimeoutError:
                continue
            except OSError:
                return  # the socket was closed
            try:
                self.hear(data)
            except Exception as e:  # the database is away: the next beats are tried again
                log.warning("beat_not_heard", error=str(e))


@contextmanager
def listening(svc: Services, host: str, port: int) -> Iterator[BeatListener | None]:
    """Hear beats at `host`:`port` (UDP) while the context lasts. None when that address
    cannot be bound: hosts are then alive by their long-polls alone, as before beats."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as e:
        log.warning("beats_not_heard", address=f"{host}:{port}", error=str(e))
        yield None
        return
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        log.warning("beats_not_heard", address=f"{host}:{port}", error=str(e))
        yield None
        return
    listener, stop = BeatListener(svc), threading.Event()
    thread = threading.Thread(target=listener.serve, args=(sock, stop), daemon=True,
                              name="cumulo-beats")
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(2 * _RECV_TIMEOUT_S)
        sock.close()
