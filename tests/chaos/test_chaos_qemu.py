"""The chaos suite with real VMs (issue 25, item 4): a small storm on a two-host QEMU cloud
(one zone) while single QEMU processes, agents and `cumulo up` are killed (`kill -9`) at
seeded moments. Two clients create, stop, start, reboot, delete, migrate, attach and detach
volumes, snapshot and move public IPs; a third instance's guest wrote and synced a volume
before, and its QEMU is the first one killed.

After convergence: every instance in the state last asked for; one whose QEMU was killed
under it says so (`error`, "exited") and runs again when started, as the project's rules
have it (agent/decide.py: a crash is reported, never silently restarted); exactly one QEMU
per running instance and none else, nothing left on the hosts (tests/chaos/leftovers.py); no
migration half-way; and the synced volume's bytes unchanged (md5).
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos import leftovers
from tests.chaos.killer import Killer
from tests.chaos.storm import Api, Client, Model
from tests.chaos.test_chaos import ONE_ZONE, run_storm
from tests.chaos.verdict import converge, ended, scene, story, unsettled, wait_none
from tests.integration.conftest import Cloud, _make, agent_pids, qemu_pids
from tests.integration.test_network_cloud import wait_ssh
from tests.integration.test_volumes_cloud import device_of, rssh

pytestmark = [pytest.mark.chaos, pytest.mark.qemu]

CLIENTS, OPS, MAX_INSTANCES = 2, 16, 2  # a few tiny VMs: TCG boots are what costs
PAUSE_S = 2.0  # between operations: the storm lasts while VMs boot, run and move
KILLS = 5  # at least one QEMU, one agent, one `cumulo up`
BOOT_S = 420.0  # convergence, every VM booted again, under a loaded machine's TCG


@pytest.fixture
def qemu_cloud_2() -> Iterator[Cloud]:
    for cloud in _make("qemu", ["--hosts", "2"]):
        (cloud.state_dir / "cumulo.toml").write_text(cloud.config + ONE_ZONE)
        cloud.start()
        yield cloud


def _md5(c: Cloud, vm: str, dev: str, mib: int) -> str:
    return rssh(c, vm, "sh", "-c", f"'head -c {mib}M /dev/{dev} | md5sum'").split()[0]


def _synced_volume(c: Cloud, name: str, volume: str) -> tuple[dict[str, Any], dict[str, Any],
                                                              str]:
    """A running instance `name` whose guest wrote 8 MiB to `volume` and synced them: the
    instance, the volume and the bytes' md5."""
    c.json("keypair", "create", "k")
    vm = c.json("instance", "create", name, "--image", "tiny", "--type", "t1.nano", "--key",
                "k", "--wait")
    vol = c.json("volume", "create", volume, "--size", "1", "--wait")
    c.json("volume", "attach", volume, name, "--wait")
    wait_ssh(c, name, timeout=300)
    dev = device_of(c, name, vol["id"])
    rssh(c, name, "sh", "-c", f"'head -c 8M /dev/urandom | dd of=/dev/{dev} bs=1M conv=fsync"
                              " 2>/dev/null'")
    return vm, vol, _md5(c, name, dev, 8)


# About 1 minute. Opt-in until seed 626427342 (it replays) was fixed: a guest that obeyed a
# stop replaced by a start powered off during its live migration, and the destination's
# `cont` was refused for good ("Resetting the Virtual Machine is required").
def test_storm_with_qemu_kills_keeps_every_synced_byte(qemu_cloud_2: Cloud,
                                                       seed: int) -> None:
    c = qemu_cloud_2
    keep, vol, synced = _synced_volume(c, "keep", "keepvol")
    kept = Model(instances={"keep": "running"}, volumes={"keepvol": "keep"})

    clients = [Client(n, Api(c.state_dir), seed, max_instances=MAX_INSTANCES, migrate=True,
                      pause_s=PAUSE_S) for n in range(CLIENTS)]
    killer = Killer(c, random.Random(seed), lambda: sum(cl.done for cl in clients),
                    CLIENTS * OPS, KILLS, ["qemu", "agent", "api"], migrations=True,
                    first_qemu=keep["id"])
    run_storm(c, clients, killer, OPS)
    assert killer.kills["qemu"] and killer.kills["agent"] and killer.kills["api"], \
        killer.kills
    assert keep["id"] in killer.killed_vms

    api = Api(c.state_dir)
    models = [cl.model for cl in clients] + [kept]
    converge(api, models, BOOT_S, c.state_dir)
    # Killed under a running instance: reported, with why, and started again when asked (a
    # QEMU killed at the storm's end may be seen by its agent only now: asked as it shows).
    crashed: set[str] = set()

    def restart_crashed() -> list[str]:
        shown = api.list("/v1/instances")
        for i in shown:
            if i["state"] == "error":
                assert "exited" in i["state_reason"], i
                crashed.add(i["name"])
                assert api.call("POST", f"/v1/instances/{i['name']}/start").status_code == 202
        live = qemu_pids(c.state_dir)
        return [f"{i['name']} {i['state']} ({i['state_reason']})" for i in shown
                if i["state"] != i["desired_state"]] + [
            f"{i['name']} shown running, its QEMU gone (not seen yet)" for i in shown
            if i["state"] == "running" and i["id"] not in live]

    wait_none(restart_crashed, BOOT_S, lambda: story(api, sorted(crashed)))
    assert "keep" in crashed, "the keeper's QEMU kill went unreported"
    converge(api, models, 60, c.state_dir)
    wait_none(lambda: unsettled(api), 60, lambda: scene(api, c.state_dir))
    print(f"chaos: migrations ended {ended(api)}")
    wait_none(lambda: leftovers.check(c.state_dir, api), 60)
    leftovers.assert_catches_a_planted_orphan(c.state_dir, api)

    wait_ssh(c, "keep", timeout=300)
    assert _md5(c, "keep", device_of(c, "keep", vol["id"]), 8) == synced


@pytest.fixture
def qemu_cloud_1() -> Iterator[Cloud]:
    for cloud in _make("qemu"):
        cloud.start()
        yield cloud


def test_kills_of_qemu_agent_and_api_keep_every_synced_byte(qemu_cloud_1: Cloud,
                                                           seed: int) -> None:
    """A real VM whose guest wrote and synced a volume: its QEMU killed (the instance shows
    `error` and starts again when asked), its agent killed, `cumulo up` killed, in the seed's
    order; then the volume's bytes are all there, one QEMU runs it, none is left over."""
    c = qemu_cloud_1
    vm, vol, synced = _synced_volume(c, "a", "data")

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
    api = Api(c.state_dir)
    wait_none(lambda: leftovers.check(c.state_dir, api), 60)
