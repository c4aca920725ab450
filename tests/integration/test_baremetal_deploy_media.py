"""The bare-metal deploy at the machine's level, for real: an emulated node (a QEMU machine)
boots the deploy ISO from virtual media once, its ramdisk fetches the whole-disk tiny image
over the provisioning NIC (user networking, restrict=on, one guestfwd to a loopback port),
checks its sha256 and, when it is wrong, reports that and writes nothing, as it does when
the instance's NoCloud seed cannot be fetched (a loopback HTTP server stands in for the API);
in wipe mode (a node's cleaning) it zeroes the start and the end of a disk that held data,
and reports ok. An imported GPT whole disk (made for a smaller disk, as cloud images are) is
deployed with its backup GPT moved to the disk's end and the seed's partition added. A deploy
that succeeds, through the API and the conductor, and the node booting from its disk
afterwards, then its cleaning's wipe:
test_baremetal_qemu.py (one deploy is all the suite's time allows)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cumulo.agent.storage.seed import seed_iso_bytes
from cumulo.baremetal.emulated_machine import PROVISION_ADDR, EmulatedMachine, MachineSpec
from cumulo.images import deploy_iso, imported_disk, wholedisk
from tests.disk_images import read_gpt, to_qcow2, write_gpt_disk

pytestmark = pytest.mark.qemu


class _Api:
    """Serves one image at /image, a seed at /seed (while it has one) and records what is
    POSTed to /report."""

    def __init__(self, image: Path) -> None:
        self.image = image.read_bytes()
        self.seed: bytes | None = seed_iso_bytes(instance_id="i-1", hostname="deploy-1")
        self.reports: list[bytes] = []
        self.reported = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = {"/image": api.image, "/seed": api.seed}.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.reports.append(body)
                api.reported.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[tuple[EmulatedMachine, _Api]]:
    disk = wholedisk.ensure_tiny_disk()
    api = _Api(disk / "disk.raw.gz")
    m = EmulatedMachine(MachineSpec("deploy-1", 1, 256, 1), tmp_path, provision_port=api.port)
    try:
        yield m, api
    finally:
        m.force_off()
        api.server.shutdown()
        api.server.server_close()


def _boot_deploy(m: EmulatedMachine, sha: str | None) -> None:
    """Boot the deploy ISO: deploying the image of sha256 `sha`, or wiping when None."""
    base = f"http://{PROVISION_ADDR}"
    cmdline = (deploy_iso.wipe_cmdline(f"{base}/report") if sha is None
               else deploy_iso.deploy_cmdline(f"{base}/image", sha, f"{base}/report",
                                              f"{base}/seed"))
    iso = deploy_iso.build_iso(deploy_iso.ensure_deploy_ramdisk(), cmdline)
    m.insert_media("http://127.0.0.1/deploy.iso", iso)
    m.set_boot("Cd", "Once")
    m.power_on()


def test_an_image_whose_sha256_is_wrong_is_reported_and_nothing_is_written(
    machine: tuple[EmulatedMachine, _Api],
) -> None:
    m, api = machine
    _boot_deploy(m, "0" * 64)
    assert api.reported.wait(300), m.console_log.read_text(errors="replace")[-3000:]
    [report] = set(api.reports)
    real = json.loads((wholedisk.ensure_tiny_disk() / "build.json").read_text())["gz_sha256"]
    # the ramdisk hashed the whole download (the real sha256), then refused to write it
    assert report == (f"error=the image's sha256 is {real}, expected {'0' * 64}: "
                      "nothing written").encode()
    m.force_off()
    _assert_unwritten(m.disk)


def test_a_seed_that_cannot_be_fetched_is_reported_and_nothing_is_written(
    machine: tuple[EmulatedMachine, _Api],
) -> None:
    m, api = machine
    api.seed = None  # the API answers 404 (e.g. the instance was deleted meanwhile)
    real = json.loads((wholedisk.ensure_tiny_disk() / "build.json").read_text())["gz_sha256"]
    _boot_deploy(m, real)
    assert api.reported.wait(300), m.console_log.read_text(errors="replace")[-3000:]
    assert set(api.reports) == {
        b"error=could not fetch the instance's seed from the API: nothing written"}
    m.force_off()
    _assert_unwritten(m.disk)


def _assert_unwritten(disk: Path) -> None:
    """Not one byte of the node's disk was written (every cluster of its qcow2 unallocated)."""
    done = subprocess.run(["qemu-img", "map", "--output=json", str(disk)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not [e for e in json.loads(done.stdout) if e["data"]]


def _qemu_io(disk: Path, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    done = subprocess.run([*argv, str(disk)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "fail" not in done.stdout.lower(), done.stdout + done.stderr


def test_the_ramdisk_in_wipe_mode_zeroes_the_start_and_the_end_of_the_disk(
    machine: tuple[EmulatedMachine, _Api], tmp_path: Path,
) -> None:
    m, api = machine
    mib, size = 1 << 20, 1 << 30  # the machine's 1 GiB disk
    # The last tenant's disk: data at its start (partition table, boot loader), middle and
    # end (where GPT keeps its backup).
    _qemu_io(m.disk, f"write -P 0xab 0 {8 * mib}", f"write -P 0xab {512 * mib} {mib}",
             f"write -P 0xab {size - 8 * mib} {8 * mib}")
    _boot_deploy(m, None)
    assert api.reported.wait(300), m.console_log.read_text(errors="replace")[-3000:]
    assert set(api.reports) == {b"ok"}
    assert "wiped the first and last 4 MiB of /dev/vda (2097152 sectors)" in \
        m.console_log.read_text(errors="replace")
    m.force_off()
    # Read the disk file back: its first and last 4 MiB are zeros; what lies beyond them was
    # not written (the wipe is no full erase: README "Bare metal").
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(m.disk), str(raw)], check=True,
                   timeout=120)
    with raw.open("rb") as f:
        def at(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        assert at(0, 4 * mib) == bytes(4 * mib)
        assert at(size - 4 * mib, 4 * mib) == bytes(4 * mib)
        assert at(4 * mib, mib) == b"\xab" * mib == at(512 * mib, mib)
        assert at(size - 8 * mib, mib) == b"\xab" * mib


def test_an_imported_gpt_whole_disk_is_deployed_its_backup_gpt_moved_to_the_end(
    tmp_path: Path,
) -> None:
    mib, size = 1 << 20, 1 << 30  # a 16 MiB image on the machine's 1 GiB disk
    raw = tmp_path / "cloud.raw"
    write_gpt_disk(raw, 16 * mib, [(2048, 16384)])
    with raw.open("r+b") as f:
        f.seek(2048 * 512)
        f.write(b"\xcd" * mib)
    image = tmp_path / "cloud.qcow2"
    to_qcow2(raw, image)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    built = imported_disk.ensure_imported_disk(image, sha, tmp_path / "forms")
    api = _Api(built / "disk.raw.gz")
    assert gzip.decompress(api.image) == raw.read_bytes()
    m = EmulatedMachine(MachineSpec("deploy-1", 1, 256, 1), tmp_path, provision_port=api.port)
    try:
        _boot_deploy(m, json.loads((built / "build.json").read_text())["gz_sha256"])
        assert api.reported.wait(300), m.console_log.read_text(errors="replace")[-3000:]
        assert set(api.reports) == {b"ok"}, m.console_log.read_text(errors="replace")[-3000:]
        assert "moved the backup GPT to the end of /dev/vda" in \
            m.console_log.read_text(errors="replace")
    finally:
        m.force_off()
        api.server.shutdown()
        api.server.server_close()
    out = tmp_path / "deployed.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(m.disk), str(out)], check=True,
                   timeout=120)
    last, seed_start = size // 512 - 1, size // 512 - 8192
    assert api.seed is not None
    with out.open("rb") as f:
        primary, backup = read_gpt(f, 1), read_gpt(f, last)  # both intact, the backup at the end
        assert primary.header_ok and backup.header_ok
        assert (primary.backup, backup.current, backup.backup) == (last, last, 1)
        assert primary.last_usable == backup.last_usable >= seed_start + 6144 - 1
        assert primary.partitions == backup.partitions == [
            (2048, 2048 + 16384 - 1), (seed_start, seed_start + 6144 - 1)]
        f.seek(2048 * 512)
        assert f.read(mib) == b"\xcd" * mib  # the image's partition as it was
        f.seek(seed_start * 512)
        iso = f.read(len(api.seed))
    assert iso == api.seed and b"CIDATA" in iso[32768:34816].upper()  # the ISO9660 label
