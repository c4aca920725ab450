"""The API's /metrics: who may read it, latency per route template, the cloud's gauges read
at scrape time, image bytes received."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cumulo.agent import counters
from cumulo.agent import metrics as agent_metrics
from cumulo.agent.drivers.base import VMStats
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.api.app import create_app
from cumulo.services.context import Services

TOKEN = "metrics-" + "x" * 24


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def test_only_an_admin_or_the_metrics_token_reads_metrics(svc: Services,
                                                          admin_token: str) -> None:
    svc.settings = svc.settings.model_copy(update={"metrics_token": TOKEN})
    with TestClient(create_app(svc)) as api:
        member = api.post("/v1/projects", json={"name": "p"},
                          headers={"Authorization": f"Bearer {admin_token}"})
        assert member.status_code == 201
        token = api.post("/v1/projects/p/tokens",
                         headers={"Authorization": f"Bearer {admin_token}"}).json()["token"]
        assert api.get("/metrics").status_code == 401
        assert api.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = api.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        for good in (TOKEN, admin_token):
            r = api.get("/metrics", headers={"Authorization": f"Bearer {good}"})
            assert r.status_code == 200 and "cumulo_instances" in r.text


def test_latency_per_route_template_and_gauges_of_the_cloud(api: TestClient) -> None:
    for i in range(3):
        assert api.post("/v1/instances", json={
            "name": f"vm{i}", "image": "tiny", "type": "t1.nano"}).status_code == 202
        assert api.get(f"/v1/instances/vm{i}").status_code == 200
    assert api.get("/v1/instances/nope").status_code == 404
    assert api.get("/no/such/path").status_code == 404
    text = api.get("/metrics").text
    count = "cumulo_api_request_seconds_count"
    one = {"method": "GET", "route": "/v1/instances/{ref}"}
    assert value(text, count, status="200", **one) == 3
    assert value(text, count, status="404", **one) == 1
    assert value(text, count, method="POST", route="/v1/instances", status="202") == 3
    assert value(text, count, method="GET", route="unmatched", status="404") == 1
    assert not any("vm0" in name or "vm0" in dict(labels).get("route", "")
                   for name, labels in samples(text))
    assert value(text, "cumulo_instances", state="pending", zone="local-1a") == 3
    at = {"host": "host-a", "zone": "local-1a"}
    assert value(text, "cumulo_host_vcpus", **at) == 4
    assert value(text, "cumulo_host_vcpus_used", **at) == 3
    assert value(text, "cumulo_host_ram_mib", **at) == 4096
    assert value(text, "cumulo_host_ram_mib_used", **at) == 3 * 128
    assert value(text, "cumulo_host_up", **at) == 1
    claimed = value(text, "cumulo_host_disk_claimed_mib", **at)
    assert claimed is not None and claimed > 0


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils")
def test_image_bytes_received_are_counted(api: TestClient, svc: Services,
                                          tmp_path: Path) -> None:
    svc.image_store = tmp_path / "state" / "images"
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(1 << 20)
        f.seek(510)
        f.write(b"\x55\xaa")
    name = "cumulo_image_transfer_bytes_total"
    before = value(api.get("/metrics").text, name, direction="in") or 0
    r = api.put("/v1/images/deb/upload", params={"arch": "x86_64"}, content=disk.read_bytes())
    assert r.status_code == 201, r.text
    assert value(api.get("/metrics").text, name, direction="in") == before + (1 << 20)


class _OneVM(FakeDriver):
    async def vm_stats(self) -> list[VMStats]:
        return [VMStats(vm_id="i-0", cpu_seconds=1.5, rss_bytes=2**27,
                        disks={"vda": (10, 20)}, nics={"ct00000000000": (30, 40)})]


def test_the_grafana_dashboard_asks_only_for_metrics_that_are_served(
        api: TestClient) -> None:
    """docs/grafana-dashboard.json against what the API and an agent serve."""
    api.post("/v1/instances", json={"name": "a", "image": "tiny", "type": "t1.nano"})
    counters.RECONCILE_SECONDS.observe(0.1)
    counters.QMP_ERRORS.labels(command="query-status")
    served = {name for name, _ in samples(api.get("/metrics").text)}
    agent = asyncio.run(agent_metrics.render(_OneVM(), "hv-1")).decode()
    served |= {name for name, _ in samples(agent)}
    assert value(agent, "cumulo_vm_net_sent_bytes_total", host="hv-1", vm="i-0",
                 tap="ct00000000000") == 30
    dashboard = json.loads((Path(__file__).parents[3] / "docs/grafana-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    asked = {m for e in exprs for m in re.findall(r"\bcumulo_[a-z_]+", e)}
    assert len(asked) >= 15
    assert asked <= served, asked - served
