"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when the test command
started one), services wired as in production, and an API client with an admin token."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from cumulo.api.app import create_app
from cumulo.config import Settings
from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.db.tables import Base
from cumulo.services import hosts, images
from cumulo.services.auth import ensure_default_project, issue_token
from cumulo.services.context import Principal, Role, Services
from cumulo.services.notifier import Notifier

PG_URL = os.environ.get("CUMULO_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"]


_mkdtemp = tempfile.mkdtemp


def _searchable_mkdtemp(*args: Any, **kwargs: Any) -> Any:
    made = _mkdtemp(*args, **kwargs)
    os.chmod(made, 0o711)
    return made


# Each VM's QEMU runs as its own unprivileged uid and must reach its disks under the tests'
# tmp dirs, which tempfile and pytest make 0700: they are made searchable (o+x, not listable).
setattr(tempfile, "mkdtemp", _searchable_mkdtemp)  # noqa: B010


@pytest.fixture(scope="session", autouse=True)
def _searchable_tmp_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    for d in (base.parent, base):
        os.chmod(d, 0o711)
    mktemp = tmp_path_factory.mktemp

    def searchable(basename: str, numbered: bool = True) -> Path:
        made = mktemp(basename, numbered)
        os.chmod(made, 0o711)
        return made

    tmp_path_factory.mktemp = searchable  # type: ignore[method-assign]


def _pg_cluster() -> tuple[Engine, str]:
    """An AUTOCOMMIT engine on the test cluster's `postgres` database, and the cluster's URL
    without a database."""
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CUMULO_TEST_POSTGRES_URL is not set: the test command must start "
                        "PostgreSQL (see ./bootstrap)")
        pytest.skip("PostgreSQL not available (set CUMULO_TEST_POSTGRES_URL)")
    return (create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT"), PG_URL.rsplit("/", 1)[0])


def _pg_database(template: str | None = None) -> Iterator[str]:
    """A new database on the test cluster (a copy of `template`, or empty), dropped after."""
    admin, base = _pg_cluster()
    name = "cumulo_t_" + secrets.token_hex(6)
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# Every test's database starts from the newest schema. Running the Alembic revisions for each
# one cost ~0.5 s (SQLite) and ~0.3 s (PostgreSQL) per test, minutes over the suite; so they
# run once per backend and session, into a template that each test's database copies (a
# file copy; CREATE DATABASE ... TEMPLATE). The revisions themselves are still run here, and
# checked against the models by tests/unit/db/test_schema_matches_models.py.
@pytest.fixture(scope="session")
def _sqlite_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "template.db"
    database = Database(f"sqlite:///{path}")
    upgrade(database)
    database.dispose()  # the last connection closed: the WAL is checkpointed into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def _pg_schema() -> Iterator[str]:
    gen = _pg_database()
    url = next(gen)
    database = Database(url)
    upgrade(database)
    database.dispose()  # a template takes no connections while it is copied
    try:
        yield url.rsplit("/", 1)[1]
    finally:
        next(gen, None)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "cumulo.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_schema"), path)
        database = Database(f"sqlite:///{path}")
        yield database
        database.dispose()
        return
    gen = _pg_database(template=request.getfixturevalue("_pg_schema"))
    database = Database(next(gen))
    try:
        yield database
    finally:
        database.dispose()
        next(gen, None)


def make_image_dir(root: Path, arch: str, name: str = "tiny") -> Path:
    d = root / "images" / name / arch
    d.mkdir(parents=True)
    for f in ("vmlinuz", "initrd.img", "rootfs.qcow2"):
        (d / f).write_bytes(b"")
    (d / "image.json").write_text(json.dumps({
        "name": name, "arch": arch, "boot": "kernel", "default_user": "cumulo",
        "kernel_cmdline": "console=ttyS0", "os": "test", "virtual_size_bytes": 2**30,
    }))
    return d


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running(pid: int) -> bool:
    """`pid` exists and is not a zombie (orphans may stay zombies under a PID 1 that does not
    reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stored_state(svc: Services) -> list[Any]:
    """Everything a request could change: every row of every table, and the image store."""
    with svc.db.session() as s:
        tables = [sorted(map(repr, s.execute(t.select()).all()))
                  for t in Base.metadata.sorted_tables]
    store = svc.image_store
    files = sorted(p.name for p in store.iterdir()) if store and store.exists() else []
    return [tables, files]


ADMIN = Principal(role=Role.ADMIN)
AGENT_HOST = "host-a"


@pytest.fixture
def svc(db: Database, tmp_path: Path) -> Services:
    """Services with the default project, a `tiny` image (both arches) and one host of
    4 vCPUs / 4096 MiB in zone local-1a (vCPUs not overcommitted: 4 is what it holds)."""
    services = Services(db=db, settings=Settings(cpu_allocation_ratio=1.0), notifier=Notifier())
    with db.session() as s:
        ensure_default_project(s)
    for arch in ("x86_64", "arm64"):
        images.register_builtin(services, make_image_dir(tmp_path, arch))
    hosts.register(services, ADMIN, name=AGENT_HOST, zone="local-1a",
                   architectures=["x86_64", "arm64"], vcpus=4, ram_mib=4096, driver="fake",
                   accel="fake", agent_url="")
    return services


@pytest.fixture
def admin_token(svc: Services) -> str:
    with svc.db.session() as s:
        return issue_token(s, Role.ADMIN)


@pytest.fixture
def api(svc: Services, admin_token: str) -> Iterator[TestClient]:
    with TestClient(create_app(svc)) as client:
        client.headers["Authorization"] = f"Bearer {admin_token}"
        yield client
