"""The agent's Prometheus endpoint: GET /metrics on `[host] metrics_port` (loopback).

Each agent serves its own rather than pushing its numbers through its reports: per-VM series
grow with the VMs of every host, and the reports are the API's hottest path (the control
plane is benchmarked on them); a scrape of the agent costs the API nothing, reads the VMs
when Prometheus asks (never between scrapes), and is Prometheus's own model, one target per
host, like a node exporter. With `metrics_token` set, a scrape must carry it as a bearer
token.

- cumulo_agent_reconcile_seconds, cumulo_agent_qmp_errors_total: see cumulo.agent.counters
- cumulo_vm_cpu_seconds_total, cumulo_vm_rss_bytes: the VM's QEMU process (/proc)
- cumulo_vm_disk_{read,written}_bytes_total{device}: QMP query-blockstats
- cumulo_vm_net_{sent,received}_bytes_total{tap}: the guest's side of its taps
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cumulo.agent import counters
from cumulo.agent.drivers.base import Driver, VMStats
from cumulo.bearer import token_matches


class VMCollector(Collector):
    """The per-VM series of one scrape."""

    def __init__(self, host: str, stats: Sequence[VMStats]) -> None:
        self.host = host
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        vm = ["host", "vm"]
        cpu = CounterMetricFamily("cumulo_vm_cpu_seconds", "CPU time of the VM's QEMU process",
                                  labels=vm)
        rss = GaugeMetricFamily("cumulo_vm_rss_bytes", "Resident memory of the VM's QEMU",
                                labels=vm)
        disk = [*vm, "device"]
        read = CounterMetricFamily("cumulo_vm_disk_read_bytes", "Bytes the guest read",
                                   labels=disk)
        written = CounterMetricFamily("cumulo_vm_disk_written_bytes", "Bytes the guest wrote",
                                      labels=disk)
        nic = [*vm, "tap"]
        sent = CounterMetricFamily("cumulo_vm_net_sent_bytes", "Bytes the guest sent",
                                   labels=nic)
        received = CounterMetricFamily("cumulo_vm_net_received_bytes",
                                       "Bytes the guest received", labels=nic)
        for s in self.stats:
            at = [self.host, s.vm_id]
            cpu.add_metric(at, s.cpu_seconds)
            rss.add_metric(at, s.rss_bytes)
            for device, (r, w) in s.disks.items():
                read.add_metric([*at, device], r)
                written.add_metric([*at, device], w)
            for tap, (out, into) in s.nics.items():
                sent.add_metric([*at, tap], out)
                received.add_metric([*at, tap], into)
        yield from (cpu, rss, read, written, sent, received)


async def render(driver: Driver, host: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for metric in counters.ALL:
        registry.register(metric)
    registry.register(VMCollector(host, await driver.vm_stats()))
    return generate_latest(registry)


def make_app(driver: Driver, host: str, token: str) -> FastAPI:
    app = FastAPI(title="cumulo-agent-metrics", openapi_url=None, docs_url=None,
                  redoc_url=None)

    @app.get("/metrics")
    async def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if token and not token_matches(authorization, token):
            raise HTTPException(401, "a bearer token (the cloud's metrics_token) is needed")
        return Response(await render(driver, host), media_type=CONTENT_TYPE_LATEST)

    return app
