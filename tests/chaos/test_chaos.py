"""The chaos suite (issue 25, item 4) on the fake driver: 300 mixed operations from four
clients, live migrations between the zone's two hosts among them, while the API process and
agents are killed (`kill -9`) at random moments, some while a migration is under way;
afterwards, nothing lost or duplicated, everything in the state its last accepted request
asked for, no migration left half-way, each host's capacity held by its own instances only,
and nothing left on the hosts of what was deleted (tests/chaos/leftovers.py).

Seeded: the seed is printed (run with `-s` or see the failure's output) and
`CUMULO_CHAOS_SEED=N` replays the same operations and kill schedule (the threads' interleaving
is the machine's). The real-VM storm is in test_chaos_qemu.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.chaos import leftovers
from tests.chaos.killer import Killer
from tests.chaos.storm import Api, Client
from tests.chaos.verdict import converge, ended, unsettled, wait_none
from tests.integration.conftest import Cloud, _make

pytestmark = pytest.mark.chaos

CLIENTS, OPS = 4, 75  # 300 operations
KILLS = 5  # during them
# Both hosts in one zone: the storm's instances live on either, and move between them.
ONE_ZONE = '[[regions]]\nname = "local-1"\nzones = ["local-1a"]\n'


@pytest.fixture
def fake_cloud_2() -> Iterator[Cloud]:
    for cloud in _make("fake", ["--hosts", "2"]):
        (cloud.state_dir / "cumulo.toml").write_text(cloud.config + ONE_ZONE)
        cloud.start()
        yield cloud


def run_storm(c: Cloud, clients: list[Client], killer: Killer, ops: int) -> None:
    """The clients' operations with the killer at work; then `cumulo up` runs again."""
    killer.start()
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            for done in [pool.submit(cl.run, ops) for cl in clients]:
                done.result()
    finally:
        killer.stop.set()
        killer.join(timeout=120)
    lost = sum(line.endswith(": lost") for cl in clients for line in cl.log)
    print(f"chaos: {sum(len(cl.log) for cl in clients)} requests, {lost} lost with a killed"
          f" API, {sum(cl.migrations for cl in clients)} migrations, kills"
          f" {dict(killer.kills)} ({killer.during_migration} during a migration)")
    assert killer.error is None, killer.error
    if c.proc is None:
        c.start()
    refused = Counter(line.split()[-1] for cl in clients for line in cl.log
                      if "/migrate " in line and line.split()[-2] == "409")
    refused["nothing running"] = sum(line == "migrate: nothing running" for cl in clients
                                     for line in cl.log)
    print(f"chaos: migrations {ended(Api(c.state_dir))}, refused {dict(refused)}")


def test_300_operations_under_kills_lose_and_duplicate_nothing(
        fake_cloud_2: Cloud, seed: int) -> None:
    c = fake_cloud_2
    # (a pause between operations lets some instances be running when a migration is asked)
    clients = [Client(n, Api(c.state_dir), seed, migrate=True, pause_s=0.1)
               for n in range(CLIENTS)]
    killer = Killer(c, random.Random(seed), lambda: sum(cl.done for cl in clients),
                    CLIENTS * OPS, KILLS, ["api", "agent"], migrations=True)
    run_storm(c, clients, killer, OPS)
    assert killer.kills["api"] and killer.kills["agent"], killer.kills  # a storm it was
    assert sum(cl.migrations for cl in clients), "no migration was accepted"
    assert killer.during_migration, "no kill landed during a migration"
    api = Api(c.state_dir)
    converge(api, [cl.model for cl in clients], state_dir=c.state_dir)
    wait_none(lambda: unsettled(api), 60)
    print(f"chaos: migrations ended {ended(api)}")
    wait_none(lambda: leftovers.check(c.state_dir, api), 60, lambda: "migrations:\n" + "\n".join(
        f"{m['instance_id']} {m['source']} -> {m['destination']}: {m['state']} ({m['reason']})"
        for m in api.list("/v1/migrations")))
    leftovers.assert_catches_a_planted_orphan(c.state_dir, api)
