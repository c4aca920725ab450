"""The chaos suite's killer: `kill -9` of `cumulo up`, of one agent, or of one VM's QEMU,
each when the storm's progress reaches a kill point drawn from the seed (so the kills land in
the middle of the operations however fast this machine runs them). `cumulo up` is started
again at once, as systemd would; it restarts a killed agent itself. A QEMU is found by its
pidfile in this cloud's state dir (never by name: other clouds run on this machine)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

from tests.chaos.storm import Api
from tests.integration.conftest import Cloud, agent_pids, qemu_pids

ENDED = frozenset({"completed", "failed", "cancelled", "evacuated"})
WAIT_FOR_MIGRATION_S = 5.0  # at a kill point, how long to wait for a migration to hit


def active_migrations(api: Api) -> list[dict[str, object]]:
    return [m for m in api.list("/v1/migrations") if m["state"] not in ENDED]


class Killer(threading.Thread):
    """`kinds`: what may be killed (one of each first, in the seed's order, then any).
    `migrations`: at each kill point wait a little for a migration under way, so that kills
    land during migrations too (counted in `during_migration`). `first_qemu`: the VM whose
    QEMU the first QEMU kill takes (the others are drawn among the cloud's)."""

    def __init__(self, cloud: Cloud, rng: random.Random, progress: Callable[[], int],
                 total: int, kills: int, kinds: list[str], migrations: bool = False,
                 first_qemu: str | None = None) -> None:
        super().__init__(daemon=True)
        self.cloud, self.rng, self.progress = cloud, rng, progress
        self.points = sorted(rng.sample(range(total // 10, total * 9 // 10), kills))
        self.kinds = rng.sample(kinds, len(kinds)) + [
            rng.choice(kinds) for _ in range(kills - len(kinds))]
        self.migrations, self.first_qemu = migrations, first_qemu
        self.stop = threading.Event()
        self.kills: Counter[str] = Counter()
        self.during_migration = 0
        self.killed_vms: list[str] = []  # ids of the VMs whose QEMU was killed
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            api = Api(self.cloud.state_dir)
            for point, kind in zip(self.points, self.kinds, strict=True):
                while self.progress() < point:
                    if self.stop.wait(0.05):
                        return
                if self.migrations:
                    deadline = time.monotonic() + WAIT_FOR_MIGRATION_S
                    while not (moving := active_migrations(api)) and \
                            time.monotonic() < deadline and not self.stop.wait(0.1):
                        pass
                    self.during_migration += bool(moving)
                self._kill(kind)
        except BaseException as e:  # re-raised by the test
            self.error = e

    def _kill(self, kind: str) -> None:
        if kind == "api":
            self.cloud.kill()
            self.kills["api"] += 1
            self.cloud.start()
        elif kind == "agent":
            if agents := sorted(agent_pids(self.cloud.state_dir)):
                os.kill(self.rng.choice(agents), signal.SIGKILL)
                self.kills["agent"] += 1
        elif qemus := sorted(qemu_pids(self.cloud.state_dir).items()):
            vm, pid = self.rng.choice(qemus)
            if self.first_qemu in dict(qemus) and not self.killed_vms:
                vm, pid = self.first_qemu, dict(qemus)[self.first_qemu]
            os.kill(pid, signal.SIGKILL)
            self.kills["qemu"] += 1
            self.killed_vms.append(vm)
