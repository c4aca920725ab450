"""A real Prometheus (Debian's `prometheus` package) scraping a test cloud, and its HTTP API.

Started as a child process with a generated configuration in a temp dir, listening on
127.0.0.1 only; it scrapes the API's /metrics and each agent's with the cloud's
`metrics_token` (as an operator's Prometheus would), and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.integration.conftest import Cloud

PROMETHEUS = Path("/usr/bin/prometheus")
TOKEN = "scrape-" + "d" * 24  # the clouds' metrics_token here


def with_metrics(cloud: Cloud, agent_port: int) -> None:
    """Give a cloud not started yet a metrics token and its agents' /metrics ports
    (`agent_port`, and the next ones for `--hosts N`)."""
    (cloud.state_dir / "cumulo.toml").write_text(
        f'metrics_token = "{TOKEN}"\n' + cloud.config + f"metrics_port = {agent_port}\n")


@dataclass
class Prometheus:
    url: str

    def _get(self, path: str, params: dict[str, str | float]) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=30)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise PromQLError(f"{params.get('query', path)}: {body.get('error', r.text)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series of an instant query (now): [{"metric": labels, "value": [t, "v"]}]."""
        data = self._get("/api/v1/query", {"query": expr})
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> list[dict[str, Any]]:
        """[{"metric": labels, "values": [[t, "v"], ...]}] from start to end."""
        data = self._get("/api/v1/query_range",
                         {"query": expr, "start": start, "end": end, "step": step})
        return list(data["result"])

    def metadata(self) -> dict[str, Any]:
        """Metric name -> its HELP and TYPE, as scraped (a labelled counter that has no
        series yet is named here all the same)."""
        return dict(self._get("/api/v1/metadata", {}))

    def label_values(self, label: str, metric: str) -> list[str]:
        return list(self._get(f"/api/v1/label/{label}/values", {"match[]": metric}))

    def wait_targets_up(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        up: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, PromQLError):
                up = self.query("up == 1")
                if len(up) >= count:
                    return
            time.sleep(0.3)
        targets = httpx.get(self.url + "/api/v1/targets", timeout=30).text
        raise AssertionError(f"{len(up)} of {count} targets up after {timeout}s: {targets}")


class PromQLError(Exception):
    """Prometheus refused a query (a syntax error, a bad function call)."""


def _config(api_port: int, agent_ports: list[int], interval_s: float) -> dict[str, Any]:
    auth = {"authorization": {"type": "Bearer", "credentials": TOKEN}}
    return {
        "global": {"scrape_interval": f"{interval_s}s", "scrape_timeout": f"{interval_s}s",
                   "evaluation_interval": f"{interval_s}s"},
        "scrape_configs": [
            {"job_name": "cumulo-api", **auth,
             "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]},
            {"job_name": "cumulo-agent", **auth,
             "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in agent_ports]}]},
        ],
    }


@contextlib.contextmanager
def running(api_port: int, agent_ports: list[int], interval_s: float = 2) -> Iterator[Prometheus]:
    """A Prometheus scraping the API and the agents every `interval_s` until the block ends."""
    tmp = Path(tempfile.mkdtemp(prefix="cumulo-prom-"))
    # JSON is YAML: no YAML writer needed.
    (tmp / "prometheus.yml").write_text(json.dumps(_config(api_port, agent_ports, interval_s)))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(tmp / 'prometheus.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(prom.url + "/-/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("prometheus not ready after 60 s")
            time.sleep(0.2)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
