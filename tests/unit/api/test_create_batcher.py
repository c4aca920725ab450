"""Creates that reach the API together are written in one batch (cumulo.api.batches), and
each request still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest
from fastapi.testclient import TestClient

from cumulo.api.app import create_app
from cumulo.domain.errors import CumuloError
from cumulo.services import instances
from cumulo.services.context import Services
from cumulo.services.views import InstanceView
from tests.conftest import ADMIN


def _bodies(n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"name": f"vm{i}", "image": "tiny", "type": "t1.nano"}
                                    for i in range(n)]
    out[2]["image"] = "no-such-image"
    return out


async def _post_all(svc: Services, token: str, bodies: list[dict[str, object]]
                    ) -> list[httpx.Response]:
    transport = httpx.ASGITransport(create_app(svc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        # The token checked first: on PostgreSQL an unknown token is checked in a worker
        # thread, and the creates would reach the batcher in the order those threads end.
        (await client.get("/v1/instances")).raise_for_status()
        return await asyncio.gather(*(client.post("/v1/instances", json=b) for b in bodies))


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch written."""
    sizes: list[int] = []
    real = instances.create_many

    def counting(svc: Services, calls: Sequence[instances.CreateCall]
                 ) -> list[InstanceView | CumuloError]:
        sizes.append(len(calls))
        return real(svc, calls)

    monkeypatch.setattr(instances, "create_many", counting)
    return sizes


def test_concurrent_creates_share_a_batch_and_keep_their_own_answers(
        svc: Services, admin_token: str, batches: list[int]) -> None:
    with TestClient(create_app(svc)) as client:  # its event loop, as uvicorn's
        assert client.portal is not None
        answers = client.portal.call(_post_all, svc, admin_token, _bodies(4))
    assert [r.status_code for r in answers] == [202, 202, 404, 202]
    assert answers[2].json()["code"] == "unknown_image"
    assert [r.json()["name"] for r in answers if r.status_code == 202] == ["vm0", "vm1", "vm3"]
    assert batches == [4]  # one transaction for the four
    assert {v.name for v in instances.list_all(svc, ADMIN, None)} == {
        "vm0", "vm1", "vm3"}


def test_a_batch_the_database_fails_fails_its_creates_only(
        svc: Services, admin_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = instances.create_many
    failed: list[str] = []  # the names in the one batch that fails

    def failing_once(svc: Services, calls: Sequence[instances.CreateCall]
                     ) -> list[InstanceView | CumuloError]:
        if not failed:
            failed.extend(c.req.name for c in calls)
            raise RuntimeError("database gone")
        return real(svc, calls)

    monkeypatch.setattr(instances, "create_many", failing_once)
    bodies = _bodies(4)
    with TestClient(create_app(svc)) as client:
        assert client.portal is not None
        answers = client.portal.call(_post_all, svc, admin_token, bodies)
    own = {"vm0": 202, "vm1": 202, "vm2": 404, "vm3": 202}
    assert failed
    assert {str(b["name"]): r.status_code for b, r in zip(bodies, answers, strict=True)} == {
        name: 500 if name in failed else status for name, status in own.items()}
    assert {v.name for v in instances.list_all(svc, ADMIN, None)} == {
        name for name, status in own.items() if status == 202 and name not in failed}
