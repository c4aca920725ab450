"""The hosts' beats over UDP (cumulo.beats), heard by a thread of the API process at the
address and port number of its HTTP server, whatever its event loop is doing.

A datagram counts when it is well formed, newer than the host's last one heard here, and
signed with the token of the host's last long-poll answered here within KEY_FRESH_S; it is
then noted for the heartbeat flusher (services.hosts.beat_heard). Anything else is dropped
without a word: nothing answers a datagram, so a forged or replayed one changes nothing and
tells its sender nothing. Beats alone cannot keep up a host whose polls are refused (its
token revoked) or no longer reach this process: its key goes stale.

The thread reads no database and drains what the socket holds at each wake-up: every system
call lets the event loop's thread take the interpreter's lock, and taking it back while that
thread is busy costs up to a switch interval (5 ms), so one call per datagram would hear at
most ~200 a second from a busy API (1,000 hosts send 333).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from cumulo import beats
from cumulo.services import counters, hosts
from cumulo.services.context import Services

log = structlog.get_logger()

# A host's key counts this long after its last answered long-poll: far more than a poll's
# wait, and than the seconds a saturated API may take to answer one.
KEY_FRESH_S = 120.0
RECEIVE_BUFFER = 1 << 20  # bytes: a few thousand beats waiting, past a stall of the thread
_WAKE_S = 0.5  # how soon the thread sees that it must stop


class BeatListener:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._seq: dict[str, int] = {}  # name -> the newest beat heard (verified hosts only)

    def hear(self, data: bytes) -> bool:
        """One datagram: True when it counted as its host's heartbeat."""
        counted = self._counts(data)
        (counters.HOST_BEATS_COUNTED if counted else counters.HOST_BEATS_DROPPED).inc()
        return counted

    def _counts(self, data: bytes) -> bool:
        parsed = beats.decode(data)
        if parsed is None:
            return False
        name, seq, mac = parsed
        known = self._svc.notifier.beat_keys.get(name)
        if (known is None or time.monotonic() - known[2] > KEY_FRESH_S
                or seq <= self._seq.get(name, -1) or not beats.verify(name, seq, mac, known[1])):
            return False
        self._seq[name] = seq
        return hosts.beat_heard(self._svc, known[0])

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.setblocking(False)
        while not stop.is_set():
            try:
                if not select.select([sock], [], [], _WAKE_S)[0]:
                    continue
                while True:  # all that waits, without waiting
                    self.hear(sock.recv(beats.MAX_BYTES + 1))
            except BlockingIOError:
                continue
            except OSError:
                return  # the socket was closed


@contextmanager
def listening(svc: Services, host: str, port: int) -> Iterator[BeatListener | None]:
    """Hear beats at `host`:`port` (UDP) while the context lasts. None when that address
    cannot be bound: hosts are then alive by their long-polls alone."""
    sock: socket.socket | None = None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(address)
    except OSError as e:
        if sock is not None:
            sock.close()
        log.warning("beats_not_heard", address=f"{host}:{port}", error=str(e))
        yield None
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)  # capped by the OS
    listener, stop = BeatListener(svc), threading.Event()
    thread = threading.Thread(target=listener.serve, args=(sock, stop), daemon=True,
                              name="cumulo-beats")
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(2 * _WAKE_S)
        sock.close()
