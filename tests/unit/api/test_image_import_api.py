"""Image imports through the REST API: upload, URL, from an instance; delete; shadowing.

Runs on SQLite and PostgreSQL (the `db` fixture). Every refused request must leave the image
list and the image store exactly as they were.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import http.server
import shutil
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cumulo.agent import main
from cumulo.api import threads
from cumulo.db.tables import ImageRow, InstanceRow
from cumulo.domain.errors import CumuloError
from cumulo.images.digest import file_digest
from cumulo.services import agents, download_guard, image_exports, image_import
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN
from tests.inprocess_api import FaultyNet, agent_client

AGENT = Principal(role=Role.AGENT, host_name="host-a")

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils")

MIB = 2**20


# --- files ---------------------------------------------------------------------------------

def qimg(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def raw_disk(path: Path, size: int = 4 * MIB, fill: bytes = b"") -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(510)
        f.write(b"\x55\xaa")
        if fill:
            f.seek(MIB)
            f.write(fill)
    return path


def qcow2_disk(path: Path, size: int = 4 * MIB) -> Path:
    src = raw_disk(path.with_suffix(".src"), size, fill=b"\x5a" * MIB)
    qimg("convert", "-f", "raw", "-O", "qcow2", str(src), str(path))
    src.unlink()
    return path


def backing_shadow(path: Path) -> Path:
    qimg("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", "-u", str(path), "1M")
    return path


def data_file(path: Path) -> Path:
    qimg("create", "-f", "qcow2", "-o", f"data_file={path}.data", str(path), "1M")
    return path


def truncated(path: Path) -> Path:
    qcow2_disk(path)
    path.write_bytes(path.read_bytes()[:70000])
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes((bytes(range(251)) * 5000)[: 1 * MIB])
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def gzipped(path: Path) -> Path:
    path.write_bytes(gzip.compress(raw_disk(path.with_suffix(".raw")).read_bytes()))
    return path


def by_hand_backing(path: Path) -> Path:
    qimg("create", "-f", "qcow2", str(path), "1M")
    data = bytearray(path.read_bytes())
    data[0x1000:0x100B] = b"/etc/shadow"
    data[8:16] = struct.pack(">Q", 0x1000)
    data[16:20] = struct.pack(">I", 11)
    path.write_bytes(bytes(data))
    return path


# --- fixtures and helpers ------------------------------------------------------------------

@pytest.fixture
def store(svc: Services, tmp_path: Path) -> Path:
    """An image store laid out like `cumulo up`'s: `<state>/images`."""
    svc.image_store = tmp_path / "state" / "images"
    return svc.image_store


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "files"
    d.mkdir()
    return d


def upload(api: TestClient, name: str, path: Path, **params: Any) -> Any:
    params.setdefault("arch", "x86_64")
    return api.put(f"/v1/images/{name}/upload", params=params, content=path.read_bytes(),
                   headers={"Content-Type": "application/octet-stream"})


def names(api: TestClient, **params: Any) -> list[tuple[str, str | None]]:
    return [(i["name"], i["project"]) for i in api.get("/v1/images", params=params).json()]


def store_files(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def assert_problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code, r.json()
    assert "\n" not in r.json()["detail"]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Redirects(Quiet):
    """GET /to/ADDRESS:PORT/PATH answers 302 to http://ADDRESS:PORT/PATH."""

    def do_GET(self) -> None:
        if not self.path.startswith("/to/"):
            super().do_GET()
            return
        self.send_response(302)
        self.send_header("Location", "http://" + self.path.removeprefix("/to/"))
        self.end_headers()


@pytest.fixture
def http_dir(files: Path, svc: Services) -> Iterator[str]:
    """A local web server on 127.0.0.1 serving `files` (and redirects: see Redirects); yields
    its base URL. 127.0.0.1 is allowed to imports, as an operator allows a local mirror."""
    svc.settings.image_url_allowed_networks = ["127.0.0.1/32"]
    handler = functools.partial(Redirects, directory=str(files))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- uploads -------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [qcow2_disk, raw_disk])
def test_upload_is_checked_converted_and_stored_read_only(
    api: TestClient, store: Path, files: Path, make: Any
) -> None:
    r = upload(api, "deb", make(files / "img"), default_user="debian", os="Debian 12")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["project"], body["default_user"], body["os"]) == (
        "deb", "default", "debian", "Debian 12")
    (variant,) = body["variants"]
    assert (variant["arch"], variant["boot"], variant["virtual_size_bytes"]) == (
        "x86_64", "bios", 4 * MIB)
    (stored,) = store.iterdir()
    assert stored.name == f"{variant['id']}.qcow2"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o444
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(stored)],
                          check=True, capture_output=True, text=True).stdout
    assert '"format": "qcow2"' in info and "backing" not in info
    assert api.get("/v1/images/deb").json()["variants"][0]["id"] == variant["id"]
    r = api.post("/v1/instances", json={"name": "vm", "image": "deb", "type": "t1.nano"})
    assert r.status_code == 202, r.text


def test_arm64_defaults_to_uefi_and_a_second_arch_joins_the_image(
    api: TestClient, store: Path, files: Path
) -> None:
    disk = qcow2_disk(files / "img")
    assert upload(api, "deb", disk).status_code == 201
    r = upload(api, "deb", disk, arch="arm64")
    assert r.status_code == 201, r.text
    boots = {v["arch"]: v["boot"] for v in r.json()["variants"]}
    assert boots == {"x86_64": "bios", "arm64": "uefi"}
    assert upload(api, "deb2", disk, boot="uefi").json()["variants"][0]["boot"] == "uefi"


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (backing_shadow, 400, "image_backing_file"),
        (by_hand_backing, 400, "image_backing_file"),
        (data_file, 400, "image_data_file"),
        (truncated, 400, "corrupt_image"),
        (random_bytes, 400, "unrecognized_image"),
        (empty, 400, "empty_image"),
        (gzipped, 400, "unsupported_image_format"),
    ],
)
def test_hostile_or_broken_uploads_are_refused_and_change_nothing(
    api: TestClient, store: Path, files: Path, make: Any, status: int, code: str
) -> None:
    before = names(api)
    assert_problem(upload(api, "bad", make(files / "img")), status, code)
    assert names(api) == before
    assert store_files(store) == []


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"boot": "kernel"}, 400, "invalid_boot"),
        ({"boot": "floppy"}, 400, "invalid_boot"),
        ({"arch": "arm64", "boot": "bios"}, 400, "invalid_boot"),
        ({"arch": "sparc"}, 400, "unknown_arch"),
        ({"default_user": "Root Beer"}, 400, "invalid_user"),
        ({"public": "true", "project": "nope"}, 404, "unknown_project"),
    ],
)
def test_bad_parameters_are_refused_before_the_upload(
    api: TestClient, store: Path, files: Path, params: dict[str, Any], status: int, code: str
) -> None:
    assert_problem(upload(api, "deb", qcow2_disk(files / "img"), **params), status, code)
    assert names(api) == [("tiny", None)]
    assert store_files(store) == []


def test_bad_name_and_missing_arch(api: TestClient, store: Path, files: Path) -> None:
    disk = qcow2_disk(files / "img")
    assert_problem(upload(api, "Bad_Name", disk), 400, "invalid_name")
    r = api.put("/v1/images/deb/upload", content=disk.read_bytes())
    assert_problem(r, 400, "invalid_input")
    assert store_files(store) == []


def test_same_name_and_arch_twice_is_a_conflict(api: TestClient, store: Path, files: Path) -> None:
    disk = qcow2_disk(files / "img")
    assert upload(api, "deb", disk).status_code == 201
    assert_problem(upload(api, "deb", disk), 409, "image_exists")
    assert len(store_files(store)) == 1


def test_too_large_upload_is_refused(
    api: TestClient, store: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_import, "max_bytes", lambda svc: 2 * MIB)
    assert_problem(upload(api, "big", raw_disk(files / "img", 4 * MIB)), 413, "image_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(4):
            yield b"\0" * MIB

    r = api.put("/v1/images/big/upload", params={"arch": "x86_64"}, content=chunks())
    assert_problem(r, 413, "image_too_large")
    assert store_files(store) == []
    assert names(api) == [("tiny", None)]


def test_imports_need_an_image_store(api: TestClient, svc: Services, files: Path) -> None:
    svc.image_store = None
    assert_problem(upload(api, "deb", qcow2_disk(files / "img")), 503, "image_store_unavailable")


def test_upload_is_documented_in_openapi(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    put = spec["paths"]["/v1/images/{name}/upload"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert {"post"} <= set(spec["paths"]["/v1/images"])
    assert "post" in spec["paths"]["/v1/images/from-instance"]
    assert "delete" in spec["paths"]["/v1/images/{name}"]


# --- URLs ----------------------------------------------------------------------------------

def from_url(api: TestClient, name: str, url: str, **body: Any) -> Any:
    return api.post("/v1/images", json={"name": name, "url": url, "arch": "x86_64"} | body)


def test_import_from_url(api: TestClient, store: Path, files: Path, http_dir: str) -> None:
    raw_disk(files / "disk.raw")
    r = from_url(api, "web", f"{http_dir}/disk.raw", default_user="debian")
    assert r.status_code == 201, r.text
    assert r.json()["default_user"] == "debian"
    assert len(store_files(store)) == 1


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("file:///etc/shadow", 400, "invalid_url"),
        ("/etc/shadow", 400, "invalid_url"),
        ("ftp://127.0.0.1/x.img", 400, "invalid_url"),
        ("http://", 400, "invalid_url"),
        ("http://127.0.0.1/a b", 400, "invalid_url"),
        ("{base}/missing.img", 502, "download_failed"),
        ("{base}/shadow.qcow2", 400, "image_backing_file"),
        ("{base}/random.img", 400, "unrecognized_image"),
        ("http://127.0.0.1:1/x.img", 502, "download_failed"),
    ],
)
def test_bad_urls_are_refused_and_change_nothing(
    api: TestClient, store: Path, files: Path, http_dir: str, url: str, status: int, code: str
) -> None:
    backing_shadow(files / "shadow.qcow2")
    random_bytes(files / "random.img")
    assert_problem(from_url(api, "web", url.format(base=http_dir)), status, code)
    assert names(api) == [("tiny", None)]
    assert store_files(store) == []


@pytest.fixture(autouse=True)
def mirror_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mirror.test` resolves to 127.0.0.1, for the download guard only (not for a client
    that would resolve it again)."""
    real = download_guard.resolve

    def resolve(host: str, port: int) -> list[download_guard.IPAddress]:
        return real("127.0.0.1" if host == "mirror.test" else host, port)

    monkeypatch.setattr(download_guard, "resolve", resolve)


def test_urls_into_networks_not_allowed_are_refused_and_change_nothing(
    api: TestClient, svc: Services, store: Path, files: Path, http_dir: str
) -> None:
    """Only public addresses and the allowed networks: the API must not be a way to reach
    its own host's services (SSRF). Checked on the address connected to, redirects too."""
    raw_disk(files / "disk.raw")
    port = http_dir.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.2:{port}/disk.raw",  # loopback, outside 127.0.0.1/32
                f"http://[::1]:{port}/disk.raw",
                "http://169.254.169.254/latest/meta-data/",  # link-local: a metadata address
                "http://10.0.0.1/x.img",  # private
                f"http://[2002:7f00:2::1]:{port}/disk.raw",  # 127.0.0.2 through 6to4
                "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # the same through NAT64
                f"{http_dir}/to/127.0.0.2:{port}/disk.raw"):  # allowed, redirected out
        assert_problem(from_url(api, "web", url), 403, "url_not_allowed")
    svc.settings.image_url_allowed_networks = []  # the default: no local network at all
    for url in (f"{http_dir}/disk.raw", f"http://localhost:{port}/disk.raw",  # by name
                f"http://mirror.test:{port}/disk.raw"):
        assert_problem(from_url(api, "web", url), 403, "url_not_allowed")
    assert names(api) == [("tiny", None)]
    assert store_files(store) == []


def test_a_name_is_downloaded_from_the_address_that_was_checked(
    api: TestClient, svc: Services, store: Path, files: Path, http_dir: str
) -> None:
    """By name (the transport resolves it once, then connects to that address) and through a
    redirect that stays within the allowed networks."""
    raw_disk(files / "disk.raw")
    port = http_dir.rsplit(":", 1)[1]
    svc.settings.image_url_allowed_networks = ["127.0.0.0/8"]
    # Only the check can resolve this name: a connection that resolved it again would fail.
    r = from_url(api, "byname", f"http://mirror.test:{port}/disk.raw")
    assert r.status_code == 201, r.text
    r = from_url(api, "redirected", f"{http_dir}/to/127.0.0.1:{port}/disk.raw")
    assert r.status_code == 201, r.text
    assert len(store_files(store)) == 2


def test_url_over_the_size_cap(
    api: TestClient, store: Path, files: Path, http_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_import, "max_bytes", lambda svc: 2 * MIB)
    raw_disk(files / "disk.raw", 4 * MIB)
    assert_problem(from_url(api, "web", f"{http_dir}/disk.raw"), 413, "image_too_large")
    assert store_files(store) == []


# --- delete, visibility --------------------------------------------------------------------

def member(api: TestClient, project: str) -> TestClient:
    if api.post("/v1/projects", json={"name": project}).status_code not in (201, 409):
        raise AssertionError("cannot create project")
    token = api.post(f"/v1/projects/{project}/tokens").json()["token"]
    return TestClient(api.app, headers={"Authorization": f"Bearer {token}"})


def test_delete_is_refused_while_an_instance_uses_the_image(
    api: TestClient, store: Path, files: Path
) -> None:
    assert upload(api, "deb", qcow2_disk(files / "img")).status_code == 201
    assert api.post("/v1/instances", json={"name": "vm", "image": "deb",
                                           "type": "t1.nano"}).status_code == 202
    assert_problem(api.delete("/v1/images/deb"), 409, "image_in_use")
    assert ("deb", "default") in names(api)
    assert len(store_files(store)) == 1
    assert_problem(api.delete("/v1/images/nope"), 404, "unknown_image")
    assert upload(api, "spare", qcow2_disk(files / "img2")).status_code == 201
    assert api.delete("/v1/images/spare").status_code == 204
    assert ("spare", "default") not in names(api)
    assert len(store_files(store)) == 1


def test_delete_one_arch(api: TestClient, store: Path, files: Path) -> None:
    disk = qcow2_disk(files / "img")
    upload(api, "deb", disk)
    upload(api, "deb", disk, arch="arm64")
    assert api.delete("/v1/images/deb", params={"arch": "arm64"}).status_code == 204
    assert api.get("/v1/images/deb").json()["architectures"] == ["x86_64"]
    assert len(store_files(store)) == 1


def test_public_images_are_admin_only(api: TestClient, store: Path, files: Path) -> None:
    team = member(api, "team")
    disk = qcow2_disk(files / "img")
    assert_problem(upload(team, "pub", disk, public="true"), 403, "public_image")
    assert_problem(team.delete("/v1/images/tiny"), 403, "public_image")
    assert ("tiny", None) in names(team)
    # the project's own images are the member's to manage
    assert upload(team, "mine", disk).status_code == 201
    assert team.delete("/v1/images/mine").status_code == 204
    # an admin may remove a public image; its built-in files are left alone
    r = upload(api, "pub", disk, public="true")
    assert r.status_code == 201 and r.json()["project"] is None
    assert ("pub", None) in names(team)
    assert api.delete("/v1/images/pub", params={"public": "true"}).status_code == 204
    assert store_files(store) == []


def test_project_images_shadow_public_ones(
    api: TestClient, svc: Services, store: Path, files: Path
) -> None:
    team = member(api, "team")
    assert upload(team, "tiny", qcow2_disk(files / "img"), default_user="mine").status_code == 201
    shown = team.get("/v1/images/tiny").json()
    assert (shown["project"], shown["default_user"]) == ("team", "mine")
    assert api.get("/v1/images/tiny").json()["project"] is None  # other projects: public
    r = team.post("/v1/instances", json={"name": "vm", "image": "tiny", "type": "t1.nano"})
    assert r.status_code == 202, r.text
    with svc.db.session() as s:
        inst = s.scalar(select(InstanceRow).where(InstanceRow.name == "vm"))
        assert inst is not None
        img = s.get(ImageRow, inst.image_id)
        assert img is not None and img.project_id is not None
    # the project's tiny has no arm64 variant: it does not fall back to the public one
    r = team.post("/v1/instances", json={"name": "vm2", "image": "tiny", "type": "t1.nano",
                                         "arch": "arm64"})
    assert_problem(r, 400, "image_arch_mismatch")
    assert_problem(team.delete("/v1/images/tiny"), 409, "image_in_use")


def test_deleting_a_project_image_uncovers_the_public_one(
    api: TestClient, store: Path, files: Path
) -> None:
    team = member(api, "team")
    assert upload(team, "tiny", qcow2_disk(files / "img")).status_code == 201
    assert team.get("/v1/images/tiny").json()["project"] == "team"
    assert team.delete("/v1/images/tiny").status_code == 204
    assert team.get("/v1/images/tiny").json()["project"] is None
    assert store_files(store) == []


# --- from an instance ----------------------------------------------------------------------

def make_instance(api: TestClient, name: str = "vm") -> str:
    r = api.post("/v1/instances", json={"name": name, "image": "tiny", "type": "t1.nano"})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def mark_stopped(svc: Services, instance_id: str) -> None:
    with svc.db.session() as s:
        row = s.get(InstanceRow, instance_id)
        assert row is not None
        row.state, row.desired_power = "stopped", "stopped"


def fake_overlay(store: Path, files: Path, instance_id: str) -> Path:
    base = qcow2_disk(files / "base.qcow2")
    d = store.parent / "hosts" / "host-a" / "instances" / instance_id
    d.mkdir(parents=True)
    disk = d / "disk.qcow2"
    qimg("create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk), "8M")
    return disk


async def export_by_agent(svc: Services, store: Path, export_id: str, vm: str,
                          running: bool = False) -> FaultyNet:
    """The instance's host agent does the export job: its real Exporter, over HTTP to the
    API application in this process, with its host token."""
    net = FaultyNet(svc)
    client = agent_client(svc, net, "host-a")
    exporter = main.exporter(client, "host-a", store.parent / "hosts" / "host-a")
    exporter.ensure(export_id, vm, running=running)
    await asyncio.gather(*exporter._tasks.values())
    assert not (store.parent / "hosts" / "host-a" / "exports" / f"{export_id}.qcow2").exists()
    return net


async def test_create_from_instance_is_exported_and_uploaded_by_the_host(
    api: TestClient, svc: Services, store: Path, files: Path
) -> None:
    vm = make_instance(api)
    fake_overlay(store, files, vm)
    mark_stopped(svc, vm)
    export_id = image_exports.request(svc, ADMIN, None, "snap", "vm")
    # The instance's assignment carries the job (the API itself never opens the disk).
    (a,) = agents.assignments(svc, AGENT, "host-a").instances
    assert a.export_id == export_id
    net = await export_by_agent(svc, store, export_id, vm)
    assert [r.method for r in net.requests] == ["POST", "PUT"]  # running, then the upload
    body = image_exports.wait(svc, export_id).model_dump()
    assert (body["project"], body["default_user"], body["os"]) == ("default", "cumulo", "test")
    (variant,) = body["variants"]
    assert (variant["boot"], variant["virtual_size_bytes"]) == ("kernel", 8 * MIB)
    stored = store / f"{variant['id']}.qcow2"
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(stored)],
                          check=True, capture_output=True, text=True).stdout
    assert "backing" not in info
    with svc.db.session() as s:
        row = s.get(ImageRow, variant["id"])
        tiny = s.scalar(select(ImageRow).where(ImageRow.name == "tiny",
                                               ImageRow.arch == "x86_64"))
        assert row is not None and tiny is not None
        assert (row.kernel_sha256, row.initrd_sha256, row.kernel_cmdline) == (
            tiny.kernel_sha256, tiny.initrd_sha256, tiny.kernel_cmdline)
        assert (row.disk_size, row.disk_sha256) == file_digest(stored)
    (a,) = agents.assignments(svc, AGENT, "host-a").instances
    assert a.export_id is None  # done: the host may start the instance again
    assert_problem(api.post("/v1/images/from-instance", json={"name": "snap", "instance": "vm"}),
                   409, "image_exists")


async def test_the_users_request_answers_once_the_agent_uploaded(
    api: TestClient, svc: Services, store: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One long-job thread: the user's request must not hold it while it waits, or the
    # upload that ends the job (checked and recorded in that pool) would wait for ever.
    monkeypatch.setattr(threads, "_long_jobs", ThreadPoolExecutor(max_workers=1))
    vm = make_instance(api)
    fake_overlay(store, files, vm)
    mark_stopped(svc, vm)
    post = asyncio.create_task(asyncio.to_thread(
        api.post, "/v1/images/from-instance", json={"name": "snap", "instance": "vm"}))
    export_id = None
    for _ in range(200):
        (a,) = agents.assignments(svc, AGENT, "host-a").instances
        if (export_id := a.export_id) is not None:
            break
        await asyncio.sleep(0.05)
    assert export_id is not None
    await asyncio.wait_for(export_by_agent(svc, store, export_id, vm), 60)
    r = await asyncio.wait_for(post, 30)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "snap"


def test_create_from_instance_refused_unless_stopped(
    api: TestClient, svc: Services, store: Path, files: Path
) -> None:
    vm = make_instance(api)
    fake_overlay(store, files, vm)
    r = api.post("/v1/images/from-instance", json={"name": "snap", "instance": "vm"})
    assert_problem(r, 409, "instance_not_stopped")
    with svc.db.session() as s:
        row = s.get(InstanceRow, vm)
        assert row is not None
        row.state, row.desired_power = "running", "running"
    r = api.post("/v1/images/from-instance", json={"name": "snap", "instance": "vm"})
    assert_problem(r, 409, "instance_not_stopped")
    r = api.post("/v1/images/from-instance", json={"name": "snap", "instance": "nope"})
    assert_problem(r, 404, "unknown_instance")
    assert names(api) == [("tiny", None)]
    assert store_files(store) == []


async def test_create_from_instance_without_a_disk_or_running_says_why(
    api: TestClient, svc: Services, store: Path, files: Path
) -> None:
    vm = make_instance(api)
    mark_stopped(svc, vm)
    export_id = image_exports.request(svc, ADMIN, None, "snap", "vm")
    with pytest.raises(CumuloError, match="already being made") as e:
        image_exports.request(svc, ADMIN, None, "snap2", "vm")
    assert e.value.code == "export_in_progress"
    await export_by_agent(svc, store, export_id, vm)
    with pytest.raises(CumuloError, match="no disk yet") as e:
        image_exports.wait(svc, export_id)
    assert (e.value.code, e.value.status) == ("instance_disk_missing", 409)
    fake_overlay(store, files, vm)
    export_id = image_exports.request(svc, ADMIN, None, "snap", "vm")
    await export_by_agent(svc, store, export_id, vm, running=True)  # the VM runs after all
    with pytest.raises(CumuloError, match="running") as e:
        image_exports.wait(svc, export_id)
    assert e.value.code == "instance_not_stopped"
    assert names(api) == [("tiny", None)]
    assert store_files(store) == []


def test_an_export_no_host_takes_fails_with_a_reason(
    api: TestClient, svc: Services, store: Path
) -> None:
    vm = make_instance(api)
    mark_stopped(svc, vm)
    export_id = image_exports.request(svc, ADMIN, None, "snap", "vm")
    with pytest.raises(CumuloError, match="did not take the export") as e:
        image_exports.wait(svc, export_id, pickup_s=0.3)
    assert e.value.code == "host_unreachable"
    # A late agent's upload is refused: the export is over.
    with pytest.raises(CumuloError) as e:
        image_exports.target_of_upload(svc, AGENT, "host-a", export_id)
    assert e.value.code == "export_finished"


# --- a full disk ---------------------------------------------------------------------------

@pytest.fixture
def small_store(svc: Services, tmp_path: Path) -> Iterator[Path]:
    """An image store on a 6 MiB tmpfs (needs root and mount; skipped otherwise)."""
    mnt = tmp_path / "state"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    svc.image_store = mnt / "images"
    try:
        yield svc.image_store
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def noise(size: int) -> bytes:
    out = bytearray()
    x = 0x12345678
    for _ in range(size // 4):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    return bytes(out)


def test_full_disk_fails_cleanly(api: TestClient, small_store: Path, files: Path) -> None:
    # 8 MiB does not fit at all: refused while streaming.
    big = raw_disk(files / "big.raw", 8 * MIB, fill=noise(7 * MIB))
    assert_problem(upload(api, "big", big), 507, "no_space")
    assert store_files(small_store) == []
    # 4 MiB of data fits as an upload, but not twice (the converted copy): refused in convert.
    mid = raw_disk(files / "mid.raw", 4 * MIB, fill=noise(3 * MIB))
    assert_problem(upload(api, "mid", mid), 507, "no_space")
    assert store_files(small_store) == []
    assert names(api) == [("tiny", None)]
    # and a small image still goes in afterwards
    assert upload(api, "small", qcow2_disk(files / "small.qcow2")).status_code == 201


def test_allowed_networks_are_read_from_the_config_and_checked(tmp_path: Path) -> None:
    from cumulo.config import load_settings
    from cumulo.domain.errors import InvalidInput

    path = tmp_path / "cumulo.toml"
    path.write_text('image_url_allowed_networks = ["192.168.1.0/24", "fd00::/8"]\n')
    assert load_settings(path).image_url_allowed_networks == ["192.168.1.0/24", "fd00::/8"]
    assert load_settings(None).image_url_allowed_networks == []
    path.write_text('image_url_allowed_networks = ["192.168.1.0/33"]\n')
    with pytest.raises(InvalidInput, match="not a network") as e:
        load_settings(path)
    assert e.value.code == "invalid_config" and "\n" not in str(e.value)
