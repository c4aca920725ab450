"""docs/grafana-dashboard.json against a real cloud: Debian's Prometheus scrapes a QEMU
cloud (the fake driver has no VMs to measure) and every query of every panel must evaluate,
name only metrics and labels cumulo exports, and hold data where such a cloud has some."""

from __future__ import annotations

import copy
import json
import time

import pytest

from tests.conftest import free_port
from tests.integration import dashboard_queries as dq
from tests.integration import prometheus
from tests.integration.conftest import _make

SCRAPE_S = 1
RATE = f"{4 * SCRAPE_S}s"  # Grafana's $__rate_interval is at least 4 scrape intervals
# Empty in a healthy cloud: no QMP command failed, no host is down.
MAY_BE_EMPTY = ("{{instance}} {{command}}", "down {{zone}}")


@pytest.mark.qemu
def test_every_panel_query_holds_data_in_a_running_cloud() -> None:
    if not prometheus.PROMETHEUS.exists():
        pytest.skip("Debian's prometheus is not installed (./bootstrap test installs it)")
    agent_port = free_port()
    for cloud in _make("qemu"):
        prometheus.with_metrics(cloud, agent_port)
        cloud.start()
        with prometheus.running(cloud.port, [agent_port], SCRAPE_S) as prom:
            cloud.json("instance", "create", "vm1", "--image", "tiny", "--type", "t1.nano",
                       "--wait")
            # A 404 for the panel of errors by route and status.
            assert cloud.cli("instance", "show", "nope", check=False).returncode != 0
            prom.wait_targets_up(2, timeout=30)
            dashboard = dq.load()
            deadline = time.monotonic() + 30  # rates need two scrapes of the VM's series
            while (found := dq.problems(prom, dashboard, RATE, MAY_BE_EMPTY)) \
                    and time.monotonic() < deadline:
                time.sleep(SCRAPE_S)
            assert found == [], "\n".join(found)

            # The check sees a metric or a label cumulo does not export.
            text = json.dumps(dashboard)
            broken = json.loads(text.replace("cumulo_vm_rss_bytes{", "cumulo_vm_rss{")
                                .replace("sum by (state)", "sum by (status)"))
            found = dq.problems(prom, broken, RATE, MAY_BE_EMPTY)
            assert any("no target exports cumulo_vm_rss" in f for f in found), found
            assert any("Instances by state" in f and "'status'" in f for f in found), found
            quiet = copy.deepcopy(dashboard)
            quiet["templating"]["list"][1]["query"] = "label_values(cumulo_host_up, zon)"
            assert dq.problems(prom, quiet, RATE, MAY_BE_EMPTY) == [
                "variable zone: no values of zon on cumulo_host_up"]
