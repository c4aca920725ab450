"""The agent loop's requests: the report of a pass that an answer caused rides on the next
long-poll (one request per change, not two); a change seen while a poll is open is reported
on its own; a failed request makes the next pass report everything again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cumulo.agent import main
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.main import agent_loop
from cumulo.agent.reconciler import Reconciler
from cumulo.agent.storage.volumes import VolumeStore
from cumulo.agent.volume_reconciler import VolumeReconciler
from cumulo.protocol import Assignments, HostRegistration, Report, VolumeAssignment

VOL = "vol-0123456789abcdef0"
REG = HostRegistration(name="h", zone="z", architectures=["x86_64"], vcpus=1, ram_mib=1,
                       driver="fake", accel="fake")


def _answer() -> Assignments:
    vol = VolumeAssignment(id=VOL, size_gib=1, iops=100, mbps=10, desired="present",
                           generation=1)
    return Assignments(version=1, instances=[], volumes=[vol])


class Client:
    """The API, scripted: each poll's outcome in turn, then polls that wait for ever."""

    def __init__(self, stop: asyncio.Event, outcomes: list[Assignments | Exception]) -> None:
        self.stop, self.outcomes = stop, outcomes
        self.polls: list[Report | None] = []  # the report each poll carried
        self.reports: list[Report] = []  # reports sent on their own

    async def register(self, reg: HostRegistration) -> str:
        return "h"

    def beat_address(self) -> None:
        return None  # an API in process: no UDP beats

    async def assignments(self, host: str, since: int, wait: float,
                          dns: list[str] | None = None, have: str | None = None,
                          report: Report | None = None) -> Assignments:
        self.polls.append(report)
        if not self.outcomes:
            await asyncio.Event().wait()  # an open long-poll: nothing changes
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def report(self, host: str, report: Report) -> None:
        self.reports.append(report)
        self.stop.set()


def _states(r: Report | None) -> list[tuple[str, str]]:
    return [(v.id, v.state) for v in r.volumes] if r else []


@pytest.fixture
def agent(tmp_path: Path) -> tuple[Reconciler, VolumeReconciler]:
    driver = FakeDriver(check_paths=False)
    vrec = VolumeReconciler(driver, VolumeStore(tmp_path))
    return Reconciler(driver, tmp_path / "instances", volumes=vrec.attachments_for), vrec


async def test_an_answers_report_rides_on_the_next_poll(
        agent: tuple[Reconciler, VolumeReconciler]) -> None:
    stop = asyncio.Event()
    client = Client(stop, [_answer(), _answer()])
    rec, vrec = agent
    run = asyncio.create_task(agent_loop(client, rec, REG, stop, vrec))  # type: ignore[arg-type]
    for _ in range(200):
        if len(client.polls) >= 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(run, 10)
    # The first answer created the volume: its report came with the second poll, and the
    # second answer (nothing new) left the third poll without one.
    assert [_states(r) for r in client.polls[:3]] == [[], [(VOL, "available")], []]
    assert client.reports == []


async def test_a_failed_poll_is_reported_again_and_alone_while_a_poll_is_open(
        agent: tuple[Reconciler, VolumeReconciler], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "OBSERVE_S", 0.05)
    stop = asyncio.Event()
    client = Client(stop, [_answer(), httpx.ConnectError("the API went away")])
    rec, vrec = agent
    await asyncio.wait_for(agent_loop(client, rec, REG, stop, vrec), 10)  # type: ignore[arg-type]
    # The poll carrying the report failed: the report may be lost. The next poll (open,
    # unanswered) carries nothing; the next observation reports the volume again, alone.
    assert [_states(r) for r in client.polls] == [[], [(VOL, "available")], []]
    assert [_states(r) for r in client.reports] == [[(VOL, "available")]]
