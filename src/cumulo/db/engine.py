"""Engine and session factory. SQLite runs in WAL mode with a busy timeout so the API's
threads and a CLI reading at the same time do not trip over each other.

SQLite has one write lock per database, and a connection waiting for it polls with growing
sleeps (the busy handler: 1, 2, 5 ... 100 ms). Under concurrent writes from the API's worker
threads that polling, not the work, made the latency: a create waited seconds for a lock that
was free most of the time. So within one process, writers queue on a Python lock first, taken
before a transaction's first write statement and released when its connection goes back to the
pool (after the commit or rollback); the busy timeout remains for other processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        _queue_writers(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


_READ_ONLY = ("SELECT", "PRAGMA", "WITH")  # WITH: only read-only CTEs are used here


def _queue_writers(engine: Engine) -> None:
    """Writers of this process take `lock` before SQLite's write lock (see the module doc)."""
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "cumulo_writer" not in conn.info and not statement.lstrip()[:6].upper().startswith(
            _READ_ONLY
        ):
            lock.acquire()
            conn.info["cumulo_writer"] = True

    def _release(_dbapi_conn: Any, record: Any, *_args: Any) -> None:
        if record.info.pop("cumulo_writer", None):
            lock.release()

    # Back in the pool means committed or rolled back; an invalidated connection (its
    # transaction died with it) never gets there.
    event.listen(engine, "checkin", _release)
    event.listen(engine, "invalidate", _release)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        # SQLite is a library in this process: a statement is CPU work, never a wait on a
        # server (see cumulo.api.threads for what the API does with that).
        self.in_process = url.startswith("sqlite")
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
