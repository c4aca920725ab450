"""The storage host's NBD exports, with real qemu-storage-daemon processes on loopback: the
export opens only over TLS with its key; a new agent adopts a daemon that serves what is asked
(same pid), restarts one that does not (a new key: the old one opens nothing); a snapshot and
an online grow through the daemon; stop leaves no process and no file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cumulo.agent.storage.nbd_exports import DaemonExporter, ExportSpec, is_daemon
from cumulo.agent.storage.volumes import virtual_size
from tests.conftest import free_port

VOL = "vol-0000000000000abcd"
pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "qemu-storage-daemon"], capture_output=True).returncode != 0,
    reason="no qemu-storage-daemon")


def _info(port: int, name: str, psk_dir: Path | None) -> subprocess.CompletedProcess[str]:
    opts = f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={name}"
    argv = ["qemu-img", "info", "--image-opts", opts]
    if psk_dir is not None:
        argv = ["qemu-img", "info", "--object",
                f"tls-creds-psk,id=t,endpoint=client,dir={psk_dir},username={VOL}",
                "--image-opts", opts + ",tls-creds=t"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _client_key(tmp: Path, key: str) -> Path:
    d = tmp / f"client-{key[:4]}"
    d.mkdir(exist_ok=True)
    (d / "keys.psk").write_text(f"{VOL}:{key}\n")
    return d


async def test_an_export_is_tls_only_adopted_restarted_grown_and_stopped(tmp_path: Path
                                                                         ) -> None:
    disk = tmp_path / "v.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    port = free_port()
    spec = ExportSpec("a" * 32, "1" * 64, port)
    ex = DaemonExporter(tmp_path / "nbd", "127.0.0.1", None)
    try:
        await ex.ensure(VOL, disk, spec)
        pid = ex.running(VOL)
        assert pid is not None and ex.exported() == {VOL}
        assert (tmp_path / "nbd" / VOL / "keys.psk").stat().st_mode & 0o777 == 0o400
        assert "TLS" in _info(port, spec.name, None).stderr  # plain NBD: refused
        assert _info(port, spec.name, _client_key(tmp_path, "2" * 64)).returncode != 0
        assert _info(port, spec.name, _client_key(tmp_path, spec.key)).returncode == 0

        # an agent restart: the new exporter adopts the daemon that serves this export
        again = DaemonExporter(tmp_path / "nbd", "127.0.0.1", None)
        await again.ensure(VOL, disk, spec)
        assert again.running(VOL) == pid
        # a new attachment (new secrets): a new daemon; the old key opens nothing
        fresh = ExportSpec("b" * 32, "3" * 64, port)
        await again.ensure(VOL, disk, fresh)
        assert again.running(VOL) not in (None, pid)
        assert not is_daemon(pid)  # gone (at most a zombie awaiting its reaper)
        assert _info(port, fresh.name, _client_key(tmp_path, spec.key)).returncode != 0
        assert _info(port, fresh.name, _client_key(tmp_path, fresh.key)).returncode == 0

        # copied online by the daemon that holds the file open (the copy is root's after)
        copy = tmp_path / "snap.qcow2"
        await again.snapshot(VOL, copy)
        assert virtual_size(copy) == 2**30 and copy.stat().st_uid == 0

        # grown online by the same daemon: a new connection sees the new size
        daemon = again.running(VOL)
        await again.grow(VOL, disk, 2**31)
        await again.grow(VOL, disk, 2**31)  # idempotent
        assert again.running(VOL) == daemon and virtual_size(disk) == 2**31
        info = _info(port, fresh.name, _client_key(tmp_path, fresh.key))
        assert info.returncode == 0 and "2 GiB" in info.stdout, info
    finally:
        last = ex.running(VOL)
        await ex.stop(VOL)
    assert ex.exported() == set() and not (tmp_path / "nbd" / VOL).exists()
    assert last is not None and not is_daemon(last)
