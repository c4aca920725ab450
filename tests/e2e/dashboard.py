"""docs/grafana-dashboard.png: the dashboard of docs/grafana-dashboard.json, drawn against a
running cloud:

    .venv/bin/python -m tests.e2e.dashboard [OUT.png] [--minutes 4] [--vms 2]

It stands in for Grafana, which cannot be used here (AGPL, and in none of the registries this
project installs from: PyPI, Debian, npm), and renders the same JSON's queries: a throwaway
`cumulo up` with two hosts runs real QEMU VMs that write to their disks and ping their
gateway; Debian's Prometheus scrapes the API and both agents every 2 s; then each panel's
queries, with the variables set to "All" ($zone, $host: `.*`) and $__rate_interval to four
scrape intervals, go to Prometheus's HTTP API (query_range for a timeseries, query for a
bargauge), and dashboard.html draws them where the dashboard's grid puts them: rows as
headings, timeseries as line charts (uPlot, vendored from npm in tests/e2e/vendor), bargauges
as bars. Playwright photographs the page in Debian's chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.conftest import free_port
from tests.e2e.conftest import CHROMIUM
from tests.integration import dashboard_queries as dq
from tests.integration import prometheus
from tests.integration.conftest import Cloud, _make

HERE = Path(__file__).parent
SCRAPE_S = 2
RATE = f"{4 * SCRAPE_S}s"
WIDTH = 1600
# The guests' work, in the background of their boot: a little disk and network traffic
# (to their gateway, inside the host's namespace: nothing leaves the machine).
WORKLOAD = """#!/bin/sh
( gw=$(ip route | awk '/^default/ {print $3}')
  while true; do
    dd if=/dev/urandom of=/root/load bs=64k count=32 conv=fsync 2>/dev/null
    ping -c 5 -s 1200 -i 0.2 "$gw" >/dev/null 2>&1
    sleep 3
  done ) </dev/null >/dev/null 2>&1 &
"""


def _populate(cloud: Cloud, vms: int) -> None:
    """Busy VMs spread over the zones, an idle one (stopped later) and an image upload."""
    script = cloud.state_dir / "workload.sh"
    script.write_text(WORKLOAD)
    zones = [z["name"] for z in cloud.get("/v1/zones")]
    for i in range(vms):
        cloud.cli("instance", "create", f"vm-{i + 1}", "--image", "tiny", "--type", "t1.nano",
                  "--zone", zones[i % len(zones)], "--user-data", str(script), "--wait")
    cloud.cli("instance", "create", "idle", "--image", "tiny", "--type", "t1.nano", "--wait")
    disk = cloud.state_dir / "data.raw"  # a disk with a file system: an image to import
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(disk), "64M"], check=True)
    cloud.cli("image", "import", "data", str(disk), "--arch", "x86_64")


def _panels(prom: prometheus.Prometheus, dashboard: dict[str, Any], start: float,
            end: float) -> list[dict[str, Any]]:
    """Each panel with the series its queries returned, ready for dashboard.html."""
    step = max(SCRAPE_S, (end - start) / 400)
    out = []
    for panel in dashboard["panels"]:
        series: list[dict[str, Any]] = []
        for t in panel.get("targets", []):
            target = dq.Target(panel["title"], t["expr"], t.get("legendFormat", ""))
            query = target.promql(RATE)
            if panel["type"] == "bargauge":
                for s in prom.query(query):
                    series.append({"name": target.legend_of(s["metric"]),
                                   "value": float(s["value"][1])})
            else:
                for s in prom.query_range(query, start, end, step):
                    series.append({"name": target.legend_of(s["metric"]),
                                   "points": [[float(t), float(v)] for t, v in s["values"]]})
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        out.append({"type": panel["type"], "title": panel["title"], "grid": panel["gridPos"],
                    "unit": unit, "series": sorted(series, key=lambda s: str(s["name"]))})
    return out


def _page(dashboard: dict[str, Any], panels: list[dict[str, Any]], minutes: float) -> str:
    vendor = HERE / "vendor"
    data = {"title": dashboard["title"], "minutes": round(minutes, 1), "panels": panels}
    return ((HERE / "dashboard.html").read_text()
            .replace("/*UPLOT_CSS*/", (vendor / "uPlot.min.css").read_text())
            .replace("/*UPLOT_JS*/", (vendor / "uPlot.iife.min.js").read_text())
            .replace("/*DATA*/null", json.dumps(data).replace("</", "<\\/")))


def _photograph(html: str, out: Path) -> None:
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_file = Path(tmp) / "dashboard.html"
        page_file.write_text(html)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": 900}, timezone_id="UTC")
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_selector("body.drawn")
        assert not errors, errors
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def render(out: Path, minutes: float, vms: int) -> None:
    dashboard = dq.load()
    agent_port = free_port()
    for cloud in _make("qemu", ["--hosts", "2"]):
        prometheus.with_metrics(cloud, agent_port)
        cloud.start()
        with prometheus.running(cloud.port, [agent_port, agent_port + 1], SCRAPE_S) as prom:
            start = time.time()
            prom.wait_targets_up(3, timeout=60)
            _populate(cloud, vms)
            stop_at = start + minutes * 60
            stopped = False
            while time.time() < stop_at:
                cloud.get("/v1/instances")  # a console's polls, for the API panels
                with contextlib.suppress(AssertionError):  # now and then a 404
                    if int(time.time()) % 30 < 5:
                        cloud.get("/v1/instances/{}", "gone")
                if not stopped and time.time() > start + minutes * 40:
                    cloud.cli("instance", "stop", "idle")
                    stopped = True
                time.sleep(5)
            end = time.time()
            panels = _panels(prom, dashboard, start, end)
        _photograph(_page(dashboard, panels, (end - start) / 60), out)
    print(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="docs/grafana-dashboard.png", type=Path)
    parser.add_argument("--minutes", type=float, default=4, help="of scraping before the photo")
    parser.add_argument("--vms", type=int, default=2, help="VMs doing some work")
    args = parser.parse_args()
    render(args.out, args.minutes, args.vms)


if __name__ == "__main__":
    main()
