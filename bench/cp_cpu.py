"""The API's CPU per instance for each step of its life, in-process (no HTTP, no other
process): what a change to the services costs or saves, measured by `time.process_time`,
which a loaded machine distorts far less than a wall-clock rate. Not a section of
`cumulo bench` (its figures are per call, not the cloud's): run it on two trees in turn.

`steps`: a fresh SQLite database, one host, N creates (one call each), the host's reports
moving them to running (10 per report), N/10 long-poll answers, N deletes, the reports that
they are gone; ms of CPU per instance for each. `placement`: with H hosts registered (100,
1,000), the CPU of one create (placement included) and of one read of the zone's capacities.

    PYTHONPATH=. .venv/bin/python -m bench.cp_cpu --instances 300 --hosts 100,1000
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bench.control_plane import _fake_image
from cumulo.config import Settings
from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.db.tables import HostRow
from cumulo.domain.instance import Action
from cumulo.protocol import Observation
from cumulo.services import agents, hosts, images, instances, quotas
from cumulo.services.auth import ensure_default_project
from cumulo.services.context import Principal, Role, Services
from cumulo.services.notifier import Notifier

ADMIN = Principal(role=Role.ADMIN)
ZONE = "local-1a"


def _cloud(tmp: Path, n_hosts: int) -> Services:
    db = Database(f"sqlite:///{tmp / 'cumulo.db'}")
    upgrade(db)
    svc = Services(db=db, settings=Settings(), notifier=Notifier())
    with db.session() as s:
        ensure_default_project(s)
    images.register_builtin(svc, _fake_image(tmp))
    quotas.set_limits(svc, ADMIN, "default", dict.fromkeys(quotas.UNITS, str(10**9)))
    for i in range(n_hosts):
        hosts.register(svc, ADMIN, name=f"h{i:04d}", zone=ZONE, architectures=["x86_64"],
                       vcpus=64, ram_mib=16384, driver="fake", accel="fake", agent_url="")
    with db.session() as s:  # up all along however slow the machine: no agent heartbeats here
        s.execute(update(HostRow).values(last_seen=datetime.now(UTC) + timedelta(days=1)))
    return svc


def _create(svc: Services, name: str) -> str:
    return instances.create(svc, ADMIN, None,
                            instances.CreateInstance(name=name, image="tiny", type="t1.nano")).id


def _ms_each(fn: Callable[[], object], n: int) -> float:
    t = time.process_time()
    fn()
    return round(1000 * (time.process_time() - t) / n, 3)


def steps(n: int) -> dict[str, float]:
    """ms of CPU per instance for each step (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
        svc = _cloud(Path(tmp), 1)
        agent = Principal(role=Role.AGENT, host_name="h0000")
        ids: list[str] = []

        def reports(state: str, generation: int) -> None:
            for k in range(0, n, 10):
                agents.report(svc, agent, "h0000", [
                    Observation(id=i, state=state, generation=generation)
                    for i in ids[k:k + 10]])

        out = {
            "create": _ms_each(lambda: ids.extend(_create(svc, f"vm{i}") for i in range(n)), n),
            "report_running": _ms_each(lambda: reports("running", 1), n),
            "assignments": _ms_each(lambda: [agents.assignments(svc, agent, "h0000")
                                             for _ in range(max(1, n // 10))], n),
            "delete": _ms_each(lambda: [instances.act(svc, ADMIN, None, i, Action.DELETE)
                                        for i in ids], n),
            "report_deleted": _ms_each(lambda: reports("deleted", 2), n),
        }
        left = instances.list_all(svc, ADMIN, None)
        if len(ids) != n or left:  # a step that did not do its work measured nothing
            raise RuntimeError(f"{len(ids)} of {n} created, {len(left)} not gone")
        svc.db.dispose()
        return out


def placement(host_counts: tuple[int, ...], n: int) -> dict[str, dict[str, float]]:
    """Per host count: ms of CPU of one create and of one capacities read."""
    out: dict[str, dict[str, float]] = {}
    for h in host_counts:
        with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmp:
            out[str(h)] = _placement_once(_cloud(Path(tmp), h), n)
    return out


def _placement_once(svc: Services, n: int) -> dict[str, float]:
    create = _ms_each(lambda: [_create(svc, f"vm{i}") for i in range(n)], n)
    with svc.db.session() as s:
        caps = _ms_each(lambda: [hosts.capacities(s, svc.settings, ZONE) for _ in range(n)], n)
    svc.db.dispose()
    return {"create_cpu_ms": create, "capacities_cpu_ms": caps}


def run(n: int, host_counts: tuple[int, ...]) -> dict[str, Any]:
    return {"instances": n, "steps_cpu_ms_per_instance": steps(n),
            "placement": placement(host_counts, min(n, 100))}


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.cp_cpu")
    p.add_argument("--instances", type=int, default=300)
    p.add_argument("--hosts", type=lambda t: tuple(int(x) for x in t.split(",")),
                   default=(100, 1000))
    a = p.parse_args()
    print(json.dumps(run(a.instances, a.hosts), indent=2))
