"""The chaos suite (issue 25, item 4): mixed operations from several clients while the API
process, agents and QEMU processes are killed (`kill -9`) at random moments; afterwards,
nothing lost or duplicated, everything in the state its last accepted request asked for.

Seeded: the seed is printed (run with `-s` or see the failure's output) and
`CUMULO_CHAOS_SEED=N` replays the same operations and kill schedule (the threads' interleaving
is the machine's).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.chaos.storm import Api, Client, Model
from tests.integration.conftest import Cloud, _make, agent_pids, qemu_pids
from tests.integration.test_network_cloud import wait_ssh
from tests.integration.test_volumes_cloud import device_of, rssh

pytestmark = pytest.mark.chaos

SEED = int(os.environ.get("CUMULO_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
CLIENTS, OPS = 4, 75  # 300 operations
KILLS = 5  # during them
CONVERGE_S = 240.0


@pytest.fixture
def seed() -> int:
    print(f"\nchaos seed {SEED}: replay with CUMULO_CHAOS_SEED={SEED}")
    return SEED


@pytest.fixture
def fake_cloud_2() -> Iterator[Cloud]:
    for cloud in _make("fake", ["--hosts", "2"]):
        cloud.start()
        yield cloud


class Killer(threading.Thread):
    """Kills `cumulo up` (API, scheduler and, with it, its agents) or one agent when the
    storm's progress reaches each of its kill points (drawn from the seed: the kills land in
    the middle of the operations however fast this machine runs them); `cumulo up` is started
    again at once, as systemd would."""

    def __init__(self, cloud: Cloud, rng: random.Random, progress: Callable[[], int],
                 total: int) -> None:
        super().__init__(daemon=True)
        self.cloud, self.rng, self.progress = cloud, rng, progress
        self.points = sorted(rng.sample(range(total // 10, total * 9 // 10), KILLS))
        # One of each kind first (in the seed's order), then either.
        self.kinds = rng.sample(["api", "agent"], 2) + [
            rng.choice(["api", "agent", "agent"]) for _ in range(KILLS - 2)]
        self.stop = threading.Event()
        self.kills: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for point, kind in zip(self.points, self.kinds, strict=True):
                while self.progress() < point:
                    if self.stop.wait(0.05):
                        return
                if kind == "api":
                    self.cloud.kill()
                    self.kills["api"] += 1
                    self.cloud.start()
                elif agents := sorted(agent_pids(self.cloud.state_dir)):
                    os.kill(self.rng.choice(agents), signal.SIGKILL)
                    self.kills["agent"] += 1
        except BaseException as e:  # re-raised by the test
            self.error = e


def _differences(api: Api, models: list[Model]) -> list[str]:
    """What the cloud shows that the accepted requests did not ask for (empty: converged)."""
    out: list[str] = []
    shown = {i["name"]: i for i in api.list("/v1/instances")}
    want = {n: d for m in models for n, d in m.instances.items()}
    if set(shown) != set(want):
        out.append(f"instances missing {set(want) - set(shown)}, extra {set(shown) - set(want)}")
    for name, desired in want.items():
        i = shown.get(name)
        if i is None or (i["desired_state"], i["state"]) == (desired, desired):
            continue
        if (i["desired_state"] != desired or i["state"] != "error"
                or not i["state_reason"]):  # an error that says why is a true state
            out.append(f"{name}: {i['state']} ({i['state_reason']}), asked {desired}")
    for what in ("private_ip", "public_ip"):
        taken = Counter(i[what] for i in shown.values() if i[what])
        out += [f"{what} {ip} given {n} times" for ip, n in taken.items() if n > 1]
    vols = {v["name"]: v for v in api.list("/v1/volumes")}
    want_vols = {n: inst for m in models for n, inst in m.volumes.items()}
    if set(vols) != set(want_vols):
        out.append(f"volumes missing {set(want_vols) - set(vols)}, extra "
                   f"{set(vols) - set(want_vols)}")
    for name, inst in want_vols.items():
        v = vols.get(name)
        state = "in-use" if inst else "available"
        if v is not None and (v["attached_to"], v["state"]) != (inst, state):
            out.append(f"volume {name}: {v['state']} on {v['attached_to']}, asked {inst}")
    snaps = {s["name"]: s["state"] for s in api.list("/v1/snapshots")}
    want_snaps = {n for m in models for n in m.snapshots}
    if snaps != dict.fromkeys(want_snaps, "available"):
        out.append(f"snapshots {snaps}, asked {sorted(want_snaps)}")
    ips = {p["ip"]: p["instance"] for p in api.list("/v1/public-ips") if not p["auto"]}
    if ips != models[0].public_ips:
        out.append(f"public IPs {ips}, asked {models[0].public_ips}")
    return out


def _converge(api: Api, models: list[Model]) -> None:
    deadline = time.monotonic() + CONVERGE_S
    while (left := _differences(api, models)) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, "\n".join(left)


def test_300_operations_under_kills_lose_and_duplicate_nothing(
        fake_cloud_2: Cloud, seed: int) -> None:
    c = fake_cloud_2
    clients = [Client(n, Api(c.state_dir), seed) for n in range(CLIENTS)]
    killer = Killer(c, random.Random(seed), lambda: sum(cl.done for cl in clients),
                    CLIENTS * OPS)
    killer.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            for done in [pool.submit(cl.run, OPS) for cl in clients]:
                done.result()
    finally:
        killer.stop.set()
        killer.join(timeout=120)
    lost = sum(line.endswith(": lost") for cl in clients for line in cl.log)
    print(f"chaos: {sum(len(cl.log) for cl in clients)} requests, {lost} lost with a killed"
          f" API, kills {dict(killer.kills)}")
    assert killer.error is None, killer.error
    assert killer.kills["api"] and killer.kills["agent"], killer.kills  # a storm it was
    if c.proc is None:
        c.start()
    _converge(Api(c.state_dir), [cl.model for cl in clients])


def _md5(c: Cloud, vm: str, dev: str, mib: int) -> str:
    return rssh(c, vm, "sh", "-c", f"'head -c {mib}M /dev/{dev} | md5sum'").split()[0]


@pytest.mark.qemu
def test_kills_of_qemu_agent_and_api_keep_every_synced_byte(qemu_cloud_1: Cloud,
                                                           seed: int) -> None:
    """A real VM whose guest wrote and synced a volume: its QEMU killed (the instance shows
    `error` and starts again when asked), its agent killed, `cumulo up` killed, in the seed's
    order; then the volume's bytes are all there, one QEMU runs it, and no other is left."""
    c = qemu_cloud_1
    c.json("keypair", "create", "k")
    vm = c.json("instance", "create", "a", "--image", "tiny", "--type", "t1.nano", "--key",
                "k", "--wait")
    vol = c.json("volume", "create", "data", "--size", "1", "--wait")
    c.json("volume", "attach", "data", "a", "--wait")
    wait_ssh(c, "a", timeout=300)
    dev = device_of(c, "a", vol["id"])
    rssh(c, "a", "sh", "-c", f"'head -c 8M /dev/urandom | dd of=/dev/{dev} bs=1M conv=fsync"
                             " 2>/dev/null'")
    synced = _md5(c, "a", dev, 8)

    kills = ["qemu", "agent", "api"]
    random.Random(seed).shuffle(kills)
    for kill in kills:
        if kill == "qemu":
            os.kill(qemu_pids(c.state_dir)[vm["id"]], signal.SIGKILL)
            shown = c.wait_state("a", "error", 60)
            assert "exited" in shown["state_reason"], shown
            c.json("instance", "start", "a")
        elif kill == "agent":
            (agent,) = agent_pids(c.state_dir)
            os.kill(agent, signal.SIGKILL)
        else:
            c.kill()
            c.start()
        c.wait_state("a", "running", 180)
    wait_ssh(c, "a", timeout=300)
    assert _md5(c, "a", device_of(c, "a", vol["id"]), 8) == synced
    assert list(qemu_pids(c.state_dir)) == [vm["id"]]  # one QEMU, the instance's
    assert c.json("volume", "show", "data")["attached_to"] == "a"


@pytest.fixture
def qemu_cloud_1() -> Iterator[Cloud]:
    for cloud in _make("qemu"):
        cloud.start()
        yield cloud

