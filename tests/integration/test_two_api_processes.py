"""Two `cumulo api` processes on one PostgreSQL database: a write through one wakes the host
polling the other at once (LISTEN/NOTIFY), and an agent and the CLI given both URLs fail over
when one is killed, even in the middle of creates, with nothing lost or duplicated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _pg_database, free_port
from tests.integration.conftest import CUMULO

pytestmark = pytest.mark.postgres

# The long-poll an agent holds lasts 25 s (agent.main.LONG_POLL_S): a change seen well
# before that was a wake-up, not the poll's end.
WOKEN_WITHIN_S = 10.0
STORM = 12  # CLI creates under way when API a is killed


def _start_api(url: str, port: int, state: Path) -> subprocess.Popen[bytes]:
    state.mkdir(parents=True, exist_ok=True)
    (state / "cumulo.toml").write_text('[host]\nname = "unused"\n')
    log = open(state / "api.log", "ab")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([*CUMULO, "api", "--database-url", url, "--listen",
                             f"127.0.0.1:{port}", "--state-dir", str(state)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (state / "api.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.3)


@pytest.fixture
def two_apis() -> Iterator[tuple[list[int], dict[str, str], list[subprocess.Popen[bytes]]]]:
    gen = _pg_database()
    url = next(gen)
    root = Path(tempfile.mkdtemp(prefix="cmo-api-", dir="/tmp"))
    ports = [free_port(), free_port()]
    procs = [_start_api(url, ports[0], root / "a")]
    procs.append(_start_api(url, ports[1], root / "b"))  # after: A made the schema
    token = (root / "a" / "client.toml").read_text().split('token = "')[1].split('"')[0]
    try:
        yield ports, {"Authorization": f"Bearer {token}"}, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        next(gen, None)
        for side in ("a", "b"):  # shown by pytest only when the test failed
            log = root / side / "api.log"
            if log.exists():
                print(f"--- API {side}'s log (end)\n{log.read_text(errors='replace')[-4000:]}")
        shutil.rmtree(root, ignore_errors=True)


def _agent(ports: list[int], headers: dict[str, str], state: Path) -> subprocess.Popen[bytes]:
    made = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/hosts/join-tokens", headers=headers,
                      json={"zone": "local-1a"}).json()
    apis = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    return subprocess.Popen([*CUMULO, "agent", "--api", apis, "--zone", "local-1a", "--name",
                             "hv-1", "--state-dir", str(state), "--driver", "fake", "--vcpus", "16",
                             "--join-token", made["token"]], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(state.parent / "agent.err",
                                                                   "ab"))


def _instance(port: int, headers: dict[str, str], name: str) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}/v1/instances/{name}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _zones(port: int, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{port}/v1/zones", headers=headers)
    assert r.status_code == 200, r.text  # the APIs' logs are printed at teardown
    zones: list[dict[str, Any]] = r.json()
    return zones


def _until_running(port: int, headers: dict[str, str], name: str, within: float) -> float:
    t0 = time.monotonic()
    while _instance(port, headers, name)["state"] != "running":
        assert time.monotonic() - t0 < within, f"{name} not running {within} s later"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_a_write_through_one_api_wakes_the_host_polling_the_other(
        two_apis: tuple[list[int], dict[str, str], list[subprocess.Popen[bytes]]]) -> None:
    ports, headers, procs = two_apis
    state = Path(tempfile.mkdtemp(prefix="cmo-agent-", dir="/tmp")) / "hv-1"
    agent = _agent(ports, headers, state)  # it polls the first URL: API a
    try:
        deadline = time.monotonic() + 120
        while not any(h["name"] == "hv-1" and h["state"] == "up"
                      for z in _zones(ports[1], headers) for h in z["hosts"]):
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)  # its long-poll on API a is open now
        # Created through API b: the agent polling API a learns of it at once.
        body = {"name": "via-b", "image": "tiny", "type": "t1.nano"}
        r = httpx.post(f"http://127.0.0.1:{ports[1]}/v1/instances", headers=headers, json=body)
        assert r.status_code == 202, r.text
        _until_running(ports[1], headers, "via-b", WOKEN_WITHIN_S)

        # API a dies outright in the middle of CLI creates given both URLs (a first): each
        # create is answered (by a, or by b when a was gone or died with the request: the
        # create is sent again with its client token), and each instance is made once.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
        env["CUMULO_URL"] = ",".join(f"http://127.0.0.1:{p}" for p in ports)
        env["CUMULO_TOKEN"] = headers["Authorization"].removeprefix("Bearer ")
        storm = []
        for i in range(STORM):
            storm.append(subprocess.Popen(
                [*CUMULO, "-o", "json", "instance", "create", f"storm-{i}", "--image", "tiny",
                 "--type", "t1.nano"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
            if i == STORM // 2:
                procs[0].send_signal(signal.SIGKILL)
            time.sleep(0.15)
        procs[0].wait(timeout=10)
        for i, cli in enumerate(storm):
            out, err = cli.communicate(timeout=120)
            assert cli.returncode == 0, (i, err)
            assert json.loads(out)["name"] == f"storm-{i}"
        for i in range(3):
            r = httpx.post(f"http://127.0.0.1:{ports[1]}/v1/instances", headers=headers,
                           json={"name": f"after-{i}", "image": "tiny", "type": "t1.nano"})
            assert r.status_code == 202, r.text
        for i in range(3):
            _until_running(ports[1], headers, f"after-{i}", 60)
        # The CLI given both URLs moves on to b, a being gone.
        made = subprocess.run([*CUMULO, "-o", "json", "instance", "create", "by-cli", "--image",
                               "tiny", "--type", "t1.nano", "--wait"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        names = [i["name"] for i in httpx.get(f"http://127.0.0.1:{ports[1]}/v1/instances",
                                              headers=headers).json()]
        assert sorted(names) == sorted(["after-0", "after-1", "after-2", "by-cli", "via-b",
                                        *(f"storm-{i}" for i in range(STORM))])
        for i in range(STORM):
            _until_running(ports[1], headers, f"storm-{i}", 60)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        token_kept = os.path.exists(state / "agent.token")
        shutil.rmtree(state.parent, ignore_errors=True)
    assert token_kept
