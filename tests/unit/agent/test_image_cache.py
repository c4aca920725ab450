"""Images over the network, host side: a host fetches an image's files from the API into its
own cache, checked against the catalogue's sha256, and keeps them read-only; a corrupt
transfer is refused and fetched again, an interrupted one resumes with a range, two VMs of
one image cost one download, and a deleted image leaves the cache once nothing uses it.

The API is the real application in this process; the agent side is the real ApiClient,
ImageCache and Reconciler over the fake driver; faults are made in the bytes between them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.image_cache import ImageCache
from cumulo.agent.main import image_cache
from cumulo.agent.reconciler import Reconciler
from cumulo.agent.storage.disks import StorageError
from cumulo.domain.instance import Action
from cumulo.images.digest import file_digest
from cumulo.protocol import Assignment
from cumulo.services import agents, images, instances
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, AGENT_HOST
from tests.inprocess_api import FaultyNet, agent_client

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils")

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
MIB = 2**20


def big_image(root: Path) -> Path:
    """A kernel-boot image whose files are MiBs of distinct bytes (the disk a real qcow2)."""
    d = root / "images" / "big" / "x86_64"
    d.mkdir(parents=True)
    raw = d / "rootfs.raw"
    raw.write_bytes(os.urandom(2 * MIB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(d / "rootfs.qcow2")], check=True)
    raw.unlink()
    (d / "vmlinuz").write_bytes(os.urandom(3 * MIB))
    (d / "initrd.img").write_bytes(os.urandom(MIB))
    (d / "image.json").write_text(json.dumps({
        "name": "big", "arch": "x86_64", "boot": "kernel", "default_user": "cumulo",
        "kernel_cmdline": "console=ttyS0", "os": "test", "virtual_size_bytes": 2 * MIB,
    }))
    return d


@pytest.fixture
def host(svc: Services, tmp_path: Path) -> tuple[FaultyNet, Path, Path]:
    """(the network to the API, the host dir, the image's dir on the API's machine)"""
    src = big_image(tmp_path / "api")
    images.register_builtin(svc, src)
    return FaultyNet(svc), tmp_path / "hosts" / AGENT_HOST, src


def create(svc: Services, name: str) -> str:
    req = instances.CreateInstance(name=name, image="big", type="t1.nano")
    return instances.create(svc, ADMIN, None, req).id


def assigned(svc: Services) -> list[Assignment]:
    return agents.assignments(svc, AGENT, AGENT_HOST).instances


def one_vm(svc: Services, net: FaultyNet, host_dir: Path) -> tuple[Assignment, ImageCache]:
    """An instance of the image on the host, and the host's cache (nothing fetched yet)."""
    create(svc, "vm")
    (a,) = assigned(svc)
    return a, image_cache(agent_client(svc, net, AGENT_HOST), AGENT_HOST, host_dir)


async def test_a_corrupt_transfer_is_refused_and_fetched_again(
        svc: Services, host: tuple[FaultyNet, Path, Path]) -> None:
    net, host_dir, src = host
    a, cache = one_vm(svc, net, host_dir)
    disk = cache.path(a.image.id, "disk", a.image.disk.sha256)
    seen: list[bool] = []
    net.before = lambda r: seen.append(disk.exists()) if r.url.path.endswith("/disk") else None
    net.corrupt["/disk"] = 1
    files = await cache.resolve(a.image, wait_s=30)
    # Two transfers of the disk; the corrupt one never had the file's name (never bootable).
    assert len(net.gets("/disk")) == 2 and seen == [False, False]
    for role, path in files.items():
        assert path.parent.parent == host_dir / "images"  # in the host's own dir
        assert file_digest(path) == file_digest(src / {"disk": "rootfs.qcow2", "kernel":
                                                      "vmlinuz", "initrd": "initrd.img"}[role])
        assert stat.S_IMODE(path.stat().st_mode) == 0o444  # kept read-only
    assert not list((host_dir / "images").rglob("*.part"))


async def test_a_transfer_corrupt_every_time_fails_and_leaves_nothing(
        svc: Services, host: tuple[FaultyNet, Path, Path]) -> None:
    net, host_dir, _ = host
    a, cache = one_vm(svc, net, host_dir)
    net.corrupt["/initrd"] = 100
    with pytest.raises(StorageError, match="sha256"):
        await cache.resolve(a.image, wait_s=30)
    assert a.image.initrd is not None
    assert not cache.path(a.image.id, "initrd", a.image.initrd.sha256).exists()
    assert not list((host_dir / "images").rglob("*.part"))
    net.corrupt.clear()  # the network heals: the next try fetches it whole
    await cache.resolve(a.image, wait_s=30)


async def test_an_interrupted_transfer_resumes_with_a_range(
        svc: Services, host: tuple[FaultyNet, Path, Path]) -> None:
    net, host_dir, src = host
    a, cache = one_vm(svc, net, host_dir)
    net.cut["/kernel"] = MIB + 12345
    files = await cache.resolve(a.image, wait_s=30)
    first, second = net.gets("/kernel")
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={MIB + 12345}-"
    assert a.image.kernel is not None
    assert second.headers["if-range"] == f'"{a.image.kernel.sha256}"'
    size = (src / "vmlinuz").stat().st_size
    path = next(p for p in net.served if p.endswith("/kernel"))
    assert net.served[path] == size  # the cut part was not sent twice
    assert file_digest(files["kernel"]) == file_digest(src / "vmlinuz")


async def test_two_vms_of_one_image_fetch_it_once_and_boot_from_the_cache(
        svc: Services, host: tuple[FaultyNet, Path, Path]) -> None:
    net, host_dir, _ = host
    create(svc, "vm1")
    create(svc, "vm2")
    driver = FakeDriver()  # checks that every file of the VM exists
    cache = image_cache(agent_client(svc, net, AGENT_HOST), AGENT_HOST, host_dir)
    rec = Reconciler(driver, host_dir / "instances", images=cache)
    for _ in range(20):
        obs = await rec.run_pass(assigned(svc))
        if {o.state for o in obs} == {"running"}:
            break
    assert [o.state for o in obs] == ["running", "running"], obs
    assert [len(net.gets(f"/{role}")) for role in ("disk", "kernel", "initrd")] == [1, 1, 1]
    (a, _) = assigned(svc)
    for vm in driver.host.vms.values():
        spec = vm.spec
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", str(spec.boot_disk)],
            check=True, capture_output=True, text=True).stdout)
        assert info["full-backing-filename"] == str(
            cache.path(a.image.id, "disk", a.image.disk.sha256))
        assert spec.kernel is not None and spec.kernel.is_relative_to(host_dir / "images")


async def test_a_deleted_image_leaves_the_cache_once_no_instance_uses_it(
        svc: Services, host: tuple[FaultyNet, Path, Path]) -> None:
    net, host_dir, _ = host
    ids = [create(svc, "vm1"), create(svc, "vm2")]
    cache = image_cache(agent_client(svc, net, AGENT_HOST), AGENT_HOST, host_dir)
    cache.check_s = 0.0  # ask the catalogue at every pass
    rec = Reconciler(FakeDriver(), host_dir / "instances", images=cache)
    for _ in range(20):
        if {o.state for o in await rec.run_pass(assigned(svc))} == {"running"}:
            break
    image_dir = host_dir / "images" / assigned(svc)[0].image.id
    assert len(list(image_dir.iterdir())) == 3
    # One instance gone: the other still uses the image.
    instances.act(svc, ADMIN, None, ids[0], Action.DELETE)
    await _deleted(svc, rec)
    assert len(assigned(svc)) == 1 and len(list(image_dir.iterdir())) == 3
    # Every instance gone: the image is still in the catalogue, so it stays cached (the next
    # instance of it starts without a download).
    instances.act(svc, ADMIN, None, ids[1], Action.DELETE)
    await _deleted(svc, rec)
    assert assigned(svc) == [] and len(list(image_dir.iterdir())) == 3
    images.delete(svc, ADMIN, None, "big")
    await rec.run_pass(assigned(svc))
    assert not image_dir.exists()


async def _deleted(svc: Services, rec: Reconciler) -> None:
    """A pass destroys what is deleted; its report lets the API forget it."""
    agents.report(svc, AGENT, AGENT_HOST, await rec.run_pass(assigned(svc)))
    await rec.run_pass(assigned(svc))


async def test_pinned_files_stay_while_their_instance_exists(tmp_path: Path) -> None:
    """An instance dir pins the files its overlay was made from, even when the catalogue
    lost the image (or gave it new content): QEMU would fail to open its backing file."""
    from cumulo.protocol import ImageFile, ImageRef

    async def no_source(*_: object) -> httpx.Response:
        raise AssertionError("nothing to fetch")

    async def all_gone(held: list[str]) -> list[str]:
        return held

    root, inst = tmp_path / "images", tmp_path / "instances"
    cache = ImageCache(root, no_source, all_gone, inst, check_s=0.0)  # type: ignore[arg-type]
    ref = ImageRef(id="img-0123456789abcdef0", boot="bios",
                   disk=ImageFile(sha256="a" * 64, size=1))
    f = cache.path(ref.id, "disk", ref.disk.sha256)
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    (inst / "i-0123456789abcdef0").mkdir(parents=True)
    cache.pin(inst / "i-0123456789abcdef0", ref)
    await cache.collect([])
    assert f.exists()
    shutil.rmtree(inst / "i-0123456789abcdef0")
    await cache.collect([])
    assert not f.exists() and not f.parent.exists()


async def test_older_content_of_an_image_goes_once_unpinned(tmp_path: Path) -> None:
    """A built-in image rebuilt under the same id: the host fetches the new content; the old
    file stays while an instance made from it exists, and goes after."""
    from cumulo.protocol import ImageFile, ImageRef

    async def nothing_gone(held: list[str]) -> list[str]:
        return []

    root, inst = tmp_path / "images", tmp_path / "instances"
    cache = ImageCache(root, None, nothing_gone, inst, check_s=0.0)  # type: ignore[arg-type]
    old = ImageRef(id="img-0123456789abcdef0", boot="bios",
                   disk=ImageFile(sha256="a" * 64, size=1))
    new = ImageRef(id=old.id, boot="bios", disk=ImageFile(sha256="b" * 64, size=1))
    for ref in (old, new):
        f = cache.path(ref.id, "disk", ref.disk.sha256)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (inst / "i-0123456789abcdef0").mkdir(parents=True)
    cache.pin(inst / "i-0123456789abcdef0", old)
    assignment = Assignment(
        id="i-0123456789abcdef1", hostname="vm", project="p", arch="x86_64", vcpus=1,
        ram_mib=128, disk_gib=1, state="running", desired_power="running", generation=1,
        reboot_seq=0, reboot_done_seq=0, image=new)
    await cache.collect([assignment])
    assert sorted(p.name[:6] for p in (root / old.id).iterdir()) == ["disk.a", "disk.b"]
    shutil.rmtree(inst / "i-0123456789abcdef0")
    await cache.collect([assignment])
    assert [p.name[:6] for p in (root / old.id).iterdir()] == ["disk.b"]
