"""Prometheus metrics of the API process: GET /metrics (an admin token, or the configured
`metrics_token`).

- cumulo_api_request_seconds{method,route,status}: every request's latency, labelled with
  its route's template (/v1/instances/{ref}), never the raw path: one series per route.
- cumulo_instances{state,zone}, cumulo_host_*{host,zone}: read from the database when
  Prometheus scrapes, so they cost nothing between scrapes (and every API process tells the
  same numbers).
- cumulo_image_transfer_bytes_total: bytes of images received (cumulo.services.counters).
The agents serve their own (cumulo.agent.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cumulo.api.deps import principal
from cumulo.api.openapi import raises
from cumulo.bearer import token_matches
from cumulo.db.tables import InstanceRow
from cumulo.domain.errors import Forbidden
from cumulo.services import counters, hosts
from cumulo.services.auth import require_admin
from cumulo.services.context import Services

# Long-polls are held up to 25 s: the buckets reach past that.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
           60.0)
UNMATCHED = "unmatched"  # a path no route serves (404): one label for all of them


class RequestTimer:
    """ASGI middleware: one histogram observation per HTTP request (a few µs)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.histogram.labels(scope["method"], getattr(route, "path", UNMATCHED),
                                  str(status)).observe(time.perf_counter() - start)


class CloudCollector(Collector):
    """Gauges read from the database at each scrape."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily("cumulo_instances", "Instances by state and zone",
                                      labels=["state", "zone"])
        labels = ["host", "zone"]
        up = GaugeMetricFamily("cumulo_host_up", "1 when the host's agent is heard from",
                               labels=labels)
        vcpus = GaugeMetricFamily("cumulo_host_vcpus", "vCPUs a host offers", labels=labels)
        vcpus_used = GaugeMetricFamily("cumulo_host_vcpus_used", "vCPUs its instances hold",
                                       labels=labels)
        ram = GaugeMetricFamily("cumulo_host_ram_mib", "MiB of RAM a host offers",
                                labels=labels)
        ram_used = GaugeMetricFamily("cumulo_host_ram_mib_used", "MiB its instances hold",
                                     labels=labels)
        disk = GaugeMetricFamily("cumulo_host_disk_mib", "MiB of the host's state dir's "
                                 "filesystem (as its agent reported)", labels=labels)
        disk_free = GaugeMetricFamily("cumulo_host_disk_free_mib", "MiB free there",
                                      labels=labels)
        disk_claimed = GaugeMetricFamily("cumulo_host_disk_claimed_mib",
                                         "MiB its instances' disks claim", labels=labels)
        with self.svc.db.session() as s:
            for state, zone, n in s.execute(
                    select(InstanceRow.state, InstanceRow.zone, func.count())
                    .group_by(InstanceRow.state, InstanceRow.zone)):
                instances.add_metric([state, zone], n)
            for cap in hosts.capacities(s, self.svc.settings):
                at = [cap.name, cap.zone]
                up.add_metric(at, 1 if cap.up else 0)
                vcpus.add_metric(at, cap.vcpus_total)
                vcpus_used.add_metric(at, cap.vcpus_used)
                ram.add_metric(at, cap.ram_mib_total)
                ram_used.add_metric(at, cap.ram_mib_used)
                disk_claimed.add_metric(at, cap.disk_claimed_mib)
                if cap.disk_total_mib is not None and cap.disk_free_mib is not None:
                    disk.add_metric(at, cap.disk_total_mib)
                    disk_free.add_metric(at, cap.disk_free_mib)
        yield from (instances, up, vcpus, vcpus_used, ram, ram_used, disk, disk_free,
                    disk_claimed)


async def _metrics_reader(request: Request,
                          authorization: Annotated[str | None, Header()] = None) -> None:
    svc: Services = request.app.state.services
    if token_matches(authorization, svc.settings.metrics_token):
        return
    require_admin(await principal(request, authorization))


def install(app: FastAPI, svc: Services) -> None:
    registry = CollectorRegistry(auto_describe=True)
    latency = Histogram("cumulo_api_request_seconds", "API request latency by route",
                        ["method", "route", "status"], buckets=BUCKETS, registry=registry)
    for metric in counters.ALL:
        registry.register(metric)
    registry.register(CloudCollector(svc))
    app.add_middleware(RequestTimer, histogram=latency)

    @app.get("/metrics", tags=["health"], dependencies=[Depends(_metrics_reader)],
             response_class=Response, responses=raises(Forbidden))
    def metrics() -> Any:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
