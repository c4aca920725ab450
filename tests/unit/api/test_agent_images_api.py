"""The image store's endpoints for agents: a host fetches only images its instances use, with
its own token, by id and role (never a path), resumable by range; and learns which cached
images are gone."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from cumulo.db.tables import ImageRow
from cumulo.images.digest import file_digest
from cumulo.services import auth, hosts, images, instances
from cumulo.services.context import Role, Services
from tests.conftest import ADMIN, AGENT_HOST, make_image_dir


def _token(svc: Services, host: str) -> dict[str, str]:
    with svc.db.session() as s:
        return {"Authorization": f"Bearer {auth.issue_token(s, Role.AGENT, host_name=host)}"}


def _image(svc: Services, root: Path) -> tuple[str, Path]:
    """An x86_64 image `blob` whose kernel has 10 KiB of content: (its id, the kernel)."""
    d = make_image_dir(root, "x86_64", "blob")
    (d / "vmlinuz").write_bytes(bytes(range(256)) * 40)
    images.register_builtin(svc, d)
    with svc.db.session() as s:
        row = s.scalar(select(ImageRow).where(ImageRow.name == "blob"))
        assert row is not None
        return row.id, Path(row.kernel_path or "")


def test_a_host_fetches_only_what_its_instances_use(api: TestClient, svc: Services,
                                                    tmp_path: Path) -> None:
    image_id, kernel = _image(svc, tmp_path / "blob")
    mine = _token(svc, AGENT_HOST)
    url = f"/v1/agent/hosts/{AGENT_HOST}/images/{image_id}/kernel"
    r = api.get(url, headers=mine)
    assert (r.status_code, r.json()["code"]) == (403, "image_not_assigned")
    instances.create(svc, ADMIN, None, instances.CreateInstance(name="vm", image="blob",
                                                                type="t1.nano"))
    r = api.get(url, headers=mine)
    size, sha = file_digest(kernel)
    assert r.status_code == 200 and r.content == kernel.read_bytes()
    assert (r.headers["etag"], r.headers["x-cumulo-sha256"]) == (f'"{sha}"', sha)
    r = api.get(url, headers={**mine, "Range": "bytes=1000-", "If-Range": f'"{sha}"'})
    assert r.status_code == 206 and r.content == kernel.read_bytes()[1000:]
    assert r.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
    r = api.get(url, headers={**mine, "Range": "bytes=1000-", "If-Range": '"other"'})
    assert r.status_code == 200 and len(r.content) == size  # changed: the whole file
    # Another host's token, a path for a role, a malformed id: refused, nothing served.
    hosts.register(svc, ADMIN, name="host-b", zone="local-1a", architectures=["x86_64"],
                   vcpus=1, ram_mib=512, driver="fake", accel="fake", agent_url="")
    assert api.get(url, headers=_token(svc, "host-b")).status_code == 403
    r = api.get(f"/v1/agent/hosts/host-b/images/{image_id}/kernel",
                headers=_token(svc, "host-b"))
    assert (r.status_code, r.json()["code"]) == (403, "image_not_assigned")
    for bad in (f"{image_id}/..%2F..%2Fetc%2Fpasswd", f"{image_id}/rootfs.qcow2",
                "..%2Fimg/kernel"):
        r = api.get(f"/v1/agent/hosts/{AGENT_HOST}/images/{bad}", headers=mine)
        assert r.status_code in (400, 404), (bad, r.status_code)
    kernel.unlink()
    r = api.get(url, headers=mine)
    assert (r.status_code, r.json()["code"]) == (404, "image_file_missing")


def test_a_host_learns_which_cached_images_are_gone(api: TestClient, svc: Services,
                                                    tmp_path: Path) -> None:
    image_id, _ = _image(svc, tmp_path / "blob")
    gone = "img-0123456789abcdef0"
    r = api.post(f"/v1/agent/hosts/{AGENT_HOST}/images/gone",
                 json={"held": [image_id, gone, "../x"]}, headers=_token(svc, AGENT_HOST))
    assert r.status_code == 200 and r.json() == {"gone": ["../x", gone]}
    r = api.post(f"/v1/agent/hosts/{AGENT_HOST}/images/gone", json={"held": []},
                 headers=_token(svc, "other"))
    assert r.status_code == 403
