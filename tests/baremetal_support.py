"""A Redfish BMC emulator for tests: in this process (threads) for the control-plane tests, or
as its own process (`python -m cumulo.baremetal.bmc_emulator`) for the ones that power real
QEMU machines. Either way it listens on loopback only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cumulo.baremetal.bmc_emulator import Emulator, serve
from cumulo.baremetal.emulated_machine import EmulatedMachine, MachineSpec

USER, PASSWORD = "admin", "s3cret pass"


@dataclass
class Bmc:
    url: str
    machines: dict[str, EmulatedMachine]


@contextmanager
def bmc_in_thread(state_dir: Path, *specs: MachineSpec) -> Iterator[Bmc]:
    emu = Emulator([EmulatedMachine(s, state_dir) for s in specs], USER, PASSWORD)
    served = serve(emu, "127.0.0.1", 0)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not served.server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        yield Bmc(f"http://127.0.0.1:{served.port}", emu.machines)
    finally:
        served.stop()
        thread.join(30)
        emu.stop_all()


@contextmanager
def bmc_process(state_dir: Path, *specs: MachineSpec) -> Iterator[Bmc]:
    """The emulator as `cumulo up` runs it: its own process; stopped (and its machines with
    it) by its pid at the end."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pw, port_file = state_dir / "bmc-password", state_dir / "port"
    pw.write_text(PASSWORD + "\n")
    argv = [sys.executable, "-m", "cumulo.baremetal.bmc_emulator", "--state-dir",
            str(state_dir), "--username", USER, "--password-file", str(pw),
            "--port-file", str(port_file)]
    for s in specs:
        argv += ["--node", f"{s.system_id}:{s.vcpus}:{s.ram_mib}:{s.disk_gib}"]
    log = (state_dir / "emulator.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (state_dir / "emulator.log").read_text()
            time.sleep(0.05)
        machines = {s.system_id: EmulatedMachine(s, state_dir) for s in specs}
        yield Bmc(f"http://127.0.0.1:{port_file.read_text()}", machines)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for m in machines.values() if "machines" in locals() else []:
            m.force_off()  # should the emulator have left one behind
        log.close()
