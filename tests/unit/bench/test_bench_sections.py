"""Pure pieces of the VM benchmark sections: percentiles, /proc parsing, the JSON shape."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import boot_to_ssh, cloud, floor, footprint, idle, runner  # noqa: E402

SMAPS = """\
55d0c0000000-55d0c0400000 r-xp 00000000 08:01 123   /usr/bin/qemu-system-aarch64
Size:               4096 kB
Rss:                3000 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               63488 kB
Pss:               63488 kB
7f1000000000-7f1040000000 rwxp 00000000 00:00 0
Size:            1048576 kB
Rss:               40960 kB
"""


def test_percentile_is_nearest_rank() -> None:
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert cloud.percentile(xs, 50) == 3.0
    assert cloud.percentile(xs, 95) == 5.0
    assert cloud.percentile([7.0], 95) == 7.0
    assert cloud.percentile(list(range(1, 11)), 50) == 5
    with pytest.raises(ValueError):
        cloud.percentile([], 50)


def test_status_and_smaps_parsing() -> None:
    status = "Name:\tqemu\nVmPeak:\t  999 kB\nVmRSS:\t  204800 kB\nThreads:\t4\n"
    assert cloud.parse_status_kib(status) == 204800
    assert cloud.parse_status_kib(status, "VmPeak") == 999
    assert cloud.parse_status_kib("Name:\tx\n") == 0
    assert cloud.parse_status_kib("MemAvailable:   23000000 kB\n", "MemAvailable") == 23000000
    # only the mapping of exactly the guest's RAM size counts as guest RAM
    assert cloud.parse_smaps_rss(SMAPS, 64 * 1024) == 63488
    assert cloud.parse_smaps_rss(SMAPS, 128 * 1024) == 0


def test_stat_parsing_survives_odd_process_names() -> None:
    fields = ["S"] + [str(i) for i in range(4, 53)]  # fields 3.. of /proc/pid/stat
    fields[11], fields[12], fields[19] = "150", "50", "98765"  # utime, stime, starttime
    text = "1234 (qemu) x (y)) " + " ".join(fields)
    assert cloud.parse_stat_cpu_ticks(text) == 200
    assert cloud.parse_stat_start_ticks(text) == 98765


def test_real_proc_of_this_process() -> None:
    me = os.getpid()
    assert cloud.rss_kib(me) > 0
    assert cloud.cpu_s(me) > 0
    assert abs(cloud.process_start_monotonic(me) - __import__("time").monotonic()) < 3600 * 24


def test_line_watch_timestamps_markers(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    w = cloud.LineWatch(log, ["cumulo-tiny: ready"])
    w.poll()  # no file yet
    log.write_text("boot...\ncumulo-tiny: re")
    w.poll()
    assert w.seen == {}
    with log.open("a") as f:
        f.write("ady hostname=x\n")
    w.poll()
    assert set(w.seen) == {"cumulo-tiny: ready"}


def test_boot_summary_shape() -> None:
    cu = [{"create_call_s": 0.02, "qemu_start_s": 0.2, "guest_ready_s": 4.0, "ssh_s": s}
          for s in (5.0, 6.0, 7.0)]
    fl = [{"guest_ready_s": 3.5, "ssh_s": s} for s in (4.0, 5.0, 6.0)]
    r = boot_to_ssh.summarize(cu, fl)
    assert {"p50_s", "p95_s", "floor_p50_s"} <= set(r)
    assert (r["p50_s"], r["p95_s"], r["floor_p50_s"]) == (6.0, 7.0, 5.0)
    assert r["ratio_p50"] == 1.2
    assert r["breakdown_median_s"]["qemu_start"] == 0.2
    assert r["floor_breakdown_median_s"] == {"guest_ready": 3.5, "ssh": 5.0}
    assert (r["ready_to_ssh_median_s"], r["floor_ready_to_ssh_median_s"]) == (2.0, 1.5)
    assert boot_to_ssh.runs(True) == 2 and boot_to_ssh.runs(False) >= 10


def test_floor_argv_matches_cumulo_essentials(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.mkdir()
    (img / "image.json").write_text('{"kernel_cmdline": "console=ttyAMA0 quiet"}')
    argv = floor.floor_argv("arm64", img, tmp_path / "d.qcow2", tmp_path / "s.iso",
                            tmp_path / "c.log", "tcg", 128)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-accel"):argv.index("-accel") + 2] == ["-accel", "tcg"]
    assert argv[argv.index("-m") + 1] == "128"
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0 quiet"
    assert "cortex-a57" in argv and "-nodefaults" in argv and "virtio-rng-pci" in argv
    x86 = floor.floor_argv("x86_64", img, tmp_path / "d", tmp_path / "s", tmp_path / "c",
                           "tcg", 128)
    assert x86[0] == "qemu-system-x86_64" and "q35" in x86


def test_floor_dnsmasq_leases_the_guests_mac() -> None:
    """dnsmasq answers only MACs of its hosts file: the floor's guest must be in it, else it
    boots without an address and never answers SSH."""
    from cumulo.agent.net import dnsmasq

    hosts = dnsmasq.render_hosts(floor.floor_net())
    assert f"{floor.GUEST_MAC},{floor.GUEST_IP},floor" in hosts


def test_footprint_estimate_and_idle_percent() -> None:
    est = footprint.estimate_max(23000, 200, 2, 5.0)
    assert est == {"memory_bound": 109, "cpu_saturation_vms": 40, "estimate": 109}
    assert footprint.estimate_max(500, 200, 2, 0.0)["estimate"] == 0
    assert idle.percent(0.6, 60) == 1.0
    assert idle.percent(1.0, 0) == 0.0
    assert idle.vm_count(True) < idle.vm_count(False) == 50


def test_runner_table_shows_vm_sections() -> None:
    result: dict[str, Any] = {
        "date": "2026-01-01T00:00:00Z", "quick": True,
        "machine": {"accelerator": "kvm?"},
        "boot_to_ssh": {"accelerator": "tcg", "ram_mib": 128,
                        "x86_64": {"p50_s": 6.0, "p95_s": 7.0, "floor_p50_s": 5.0,
                                   "ratio_p50": 1.2, "runs": 3,
                                   "breakdown_median_s": {"ssh": 6.0},
                                   "floor_breakdown_median_s": {"ssh": 5.0}}},
        "footprint": {"qemu_overhead_mib": 138.3, "agent_mib_per_vm": 0.5,
                      "max_tiny_instances": 109, "max_tiny_is_estimate": True},
        "idle": {"cpu_percent": 1.5, "vms": 10},
    }
    table = runner.render_table(result)
    assert "| boot to SSH / floor, x86_64, p50 | 1.2 x | <= 1.15: MISSED |" in table
    assert "| idle CPU (API + agent) | 1.5 % | < 2: met |" in table
    assert "| QEMU overhead per VM | 138.3 MiB |" in table
    assert "| tiny instances that fit | 109 |" in table
    assert runner._accelerator_used(result) == "tcg"


def test_listening_loopback_slices_are_found() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:0016 00000000:0000 0A 00000000:00000000\n"   # 127.0.0.1:22 LISTEN
        "   1: 0200647F:0016 00000000:0000 0A 00000000:00000000\n"   # 127.100.0.2:22 LISTEN
        "   2: 0200B47F:0016 0100007F:9C40 01 00000000:00000000\n"   # 127.180.0.2 ESTABLISHED
        "   3: 0100000A:0016 00000000:0000 0A 00000000:00000000\n"   # 10.0.0.1 LISTEN
    )
    assert cloud.listening_loopback_octets(tcp) == {0, 100}
    assert "public_pool = \"127.180.0.0/16\"" in cloud._config("tcg", 1, 128, "127.180.0.0/16")
