"""Quotas, events and metrics of a whole cloud (`cumulo up`, its agent process), through the
CLI and the /metrics endpoints: with the fake driver, and with a real QEMU VM whose CPU,
memory, disk and network use the agent reports."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.conftest import Cloud, _make, qemu_pids
from tests.integration.test_qemu_cloud import READY, wait_console
from tests.unit.api.test_metrics_api import samples, value

TOKEN = "scrape-" + "t" * 24


@pytest.fixture
def observed_cloud(request: pytest.FixtureRequest) -> Iterator[tuple[Cloud, int]]:
    """A cloud with default quotas of its own, a metrics token and the agent's /metrics on a
    free port. Parametrized by the driver."""
    driver = getattr(request, "param", "fake")
    port = free_port()
    for cloud in _make(driver):
        (cloud.state_dir / "cumulo.toml").write_text(
            f'metrics_token = "{TOKEN}"\n[quotas]\ninstances = 5\n'
            + cloud.config + f"metrics_port = {port}\n")
        cloud.start()
        yield cloud, port


def scrape(url: str, token: str = TOKEN) -> str:
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def test_quotas_and_events_through_the_cli(observed_cloud: tuple[Cloud, int]) -> None:
    c, _ = observed_cloud
    c.cli("project", "create", "b")
    shown = c.json("project", "quota", "set", "b", "vcpus=8")
    lines = {q["resource"]: q for q in shown["quotas"]}
    assert (lines["vcpus"]["limit"], lines["vcpus"]["default"]) == (8, False)
    assert (lines["instances"]["limit"], lines["instances"]["default"]) == (5, True)  # config
    for name in ("a", "b"):
        c.json("--project", "b", "instance", "create", name, "--image", "tiny", "--vcpus", "4",
               "--ram", "128", "--wait")
    r = c.cli("--project", "b", "instance", "create", "c", "--image", "tiny", "--vcpus", "1",
              "--ram", "128", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == "error[quota_exceeded]: project 'b' would use 9 of 8 vCPUs"
    assert [i["name"] for i in c.json("--project", "b", "instance", "list")] == ["a", "b"]
    table = c.cli("project", "quota", "show", "b").stdout
    assert "vcpus" in table and "unlimited" not in table
    used = {q["resource"]: (q["used"], q["limit"])
            for q in c.json("project", "quota", "show", "b")["quotas"]}
    assert used["vcpus"] == (8, 8) and used["instances"] == (2, 5)
    bad = c.cli("project", "quota", "set", "b", "vcpus", check=False)
    assert bad.stderr.startswith("error[invalid_quota]: ")
    bad = c.cli("project", "quota", "set", "b", "cores=3", check=False)
    assert bad.stderr.startswith("error[invalid_quota]: unknown quota 'cores'")

    told = c.json("events", "--project", "b")
    assert [(e["resource_name"], e["kind"]) for e in told if e["kind"] != "quota_changed"] == [
        ("a", "created"), ("a", "started"), ("b", "created"), ("b", "started"),
        ("c", "quota_refused")]
    assert [e["kind"] for e in c.json("events", "--resource", "a", "--since", "1h")] == [
        "created", "started"]
    assert "quota_refused" in c.cli("events", "--project", "b").stdout
    assert c.cli("events", "--since", "soon", check=False).stderr.startswith(
        "error[invalid_since]: ")
    c.cli("--project", "b", "instance", "stop", "a", "--wait")
    assert [(e["kind"], e["actor"]) for e in c.json("events", "--resource", "a")][-2:] == [
        ("stop_requested", "user"), ("stopped", "user")]


def test_api_and_agent_metrics(observed_cloud: tuple[Cloud, int]) -> None:
    c, agent_port = observed_cloud
    c.json("instance", "create", "web", "--image", "tiny", "--type", "t1.nano", "--wait")
    api = scrape(f"http://127.0.0.1:{c.port}/metrics")
    assert value(api, "cumulo_instances", state="running", zone="local-1a") == 1
    assert value(api, "cumulo_host_vcpus_used", host="local", zone="local-1a") == 1
    # The agent's UDP heartbeats reach the API and count (one every 3 s).
    deadline = time.monotonic() + 15
    while not (value(api, "cumulo_host_beats_total", outcome="counted") or 0) >= 1:
        assert time.monotonic() < deadline, "no heartbeat of the agent counted over UDP"
        time.sleep(0.5)
        api = scrape(f"http://127.0.0.1:{c.port}/metrics")
    agent_url = f"http://127.0.0.1:{agent_port}/metrics"
    assert httpx.get(agent_url, timeout=30).status_code == 401
    agent = scrape(agent_url)
    passes = value(agent, "cumulo_agent_reconcile_seconds_count")
    assert passes is not None and passes >= 1
    assert "cumulo_agent_qmp_errors" in agent


@pytest.mark.qemu
@pytest.mark.parametrize("observed_cloud", ["qemu"], indirect=True)
def test_a_real_vm_use_and_its_crash(observed_cloud: tuple[Cloud, int]) -> None:
    c, agent_port = observed_cloud
    vm = c.json("instance", "create", "vm1", "--image", "tiny", "--type", "t1.nano", "--wait")
    wait_console(c, "vm1", READY.format(name="vm1"), timeout=180)
    text = scrape(f"http://127.0.0.1:{agent_port}/metrics")
    at = {"host": "local", "vm": vm["id"]}
    cpu = value(text, "cumulo_vm_cpu_seconds_total", **at)
    rss = value(text, "cumulo_vm_rss_bytes", **at)
    assert cpu is not None and cpu > 0.5  # booting a kernel under TCG
    assert rss is not None and rss > 64 * 2**20
    got = samples(text)
    read = [v for (name, labels), v in got.items()
            if name == "cumulo_vm_disk_read_bytes_total" and ("vm", vm["id"]) in labels]
    sent = [v for (name, labels), v in got.items()
            if name == "cumulo_vm_net_sent_bytes_total" and ("vm", vm["id"]) in labels]
    assert read and max(read) > 2**20  # the guest read its root disk
    assert sent and max(sent) > 0  # at least its DHCP request

    (pid,) = qemu_pids(c.state_dir).values()
    os.kill(pid, signal.SIGKILL)
    c.wait_state("vm1", "error", timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crashed = [e for e in c.json("events", "--resource", "vm1") if e["kind"] == "crashed"]
        if crashed:
            break
        time.sleep(0.5)
    assert crashed and f"pid {pid}" in crashed[0]["detail"], crashed
