"""The two child processes of the control-plane benchmark.

`python -m bench.cp_processes api --db URL --port PORT [--bus]`
    the real API application (create_app + uvicorn on 127.0.0.1), as `cumulo up` serves it;
    with --bus, wake-ups cross API processes by PostgreSQL LISTEN/NOTIFY, as `cumulo api`.
`python -m bench.cp_processes agents --config FILE`
    N simulated hypervisor hosts in one asyncio process: each is the real agent protocol
    (`cumulo.agent.main.agent_loop`: register, long-poll, reconcile, report over HTTP with
    its own agent token) with the real `Reconciler` over `FakeDriver(check_paths=False)`.

Both stop cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from fastapi import FastAPI

from bench import loop_watch
from cumulo.agent.api_client import ApiClient
from cumulo.agent.drivers.base import VMSpec
from cumulo.agent.drivers.fake import FakeDriver
from cumulo.agent.main import agent_loop
from cumulo.agent.reconciler import Reconciler
from cumulo.domain.arch import Arch
from cumulo.protocol import Assignment, HostRegistration


class FakeHostReconciler(Reconciler):
    """The real reconciler, minus the per-VM storage work (image download into the host's
    cache, qcow2 overlay via qemu-img, seed ISO) that a fake VM does not use: the benchmark
    measures the control plane, not image transfers or qemu-img.
    TODO(reconciler): once the reconciler lets a driver skip storage, drop this subclass."""

    async def _spec(self, a: Assignment, make_disk: bool = True) -> VMSpec:
        del make_disk  # no disk to make: the fake driver never opens one
        return VMSpec(
            vm_id=a.id,
            hostname=a.hostname,
            arch=Arch.parse(a.arch),
            vcpus=a.vcpus,
            ram_mib=a.ram_mib,
            boot_disk=Path(a.image.disk.sha256),  # never opened: check_paths=False
            kernel=Path(a.image.kernel.sha256) if a.image.kernel else None,
            initrd=Path(a.image.initrd.sha256) if a.image.initrd else None,
            kernel_cmdline=a.image.kernel_cmdline,
        )


def serve_api(db_url: str, port: int, bus: bool = False) -> None:
    from cumulo.api import server
    from cumulo.api.app import create_app
    from cumulo.config import Settings
    from cumulo.db.engine import Database
    from cumulo.services.context import Services
    from cumulo.services.notifier import Notifier

    db = Database(db_url)
    svc = Services(db=db, settings=Settings(), notifier=Notifier())
    pg_bus = None
    if bus:  # as `cumulo api` does when several processes share a PostgreSQL database
        from cumulo.services.pg_bus import PgBus

        pg_bus = PgBus(db_url, svc.notifier.deliver)
        svc.notifier.share_with(pg_bus.publish)
        pg_bus.start()
    app = create_app(svc)
    if os.environ.get(loop_watch.ENV):
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def watched(a: FastAPI) -> AsyncIterator[None]:
            task = loop_watch.start("api")
            async with inner(a):
                yield
            if task is not None:
                task.cancel()

        app.router.lifespan_context = watched
    try:
        server.serve(app, svc.notifier, port, access_log=False)  # as `cumulo up`
    finally:
        if pg_bus is not None:
            pg_bus.stop()
        db.dispose()


async def _agents(cfg: dict[str, object]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hosts = cfg["hosts"]
    assert isinstance(hosts, list)
    work = Path(str(cfg["work_dir"]))
    clients: list[ApiClient] = []
    tasks = []
    for h in hosts:
        client = ApiClient(str(h.get("api_url") or cfg["api_url"]), h["token"])
        clients.append(client)
        rec = FakeHostReconciler(FakeDriver(check_paths=False), work / h["name"] / "instances")
        reg = HostRegistration(
            name=h["name"], zone=str(cfg["zone"]), architectures=["x86_64", "arm64"],
            vcpus=int(str(cfg["vcpus"])), ram_mib=int(str(cfg["ram_mib"])), driver="fake",
            accel="fake", agent_url="",
        )
        tasks.append(asyncio.create_task(agent_loop(client, rec, reg, stop)))
    try:
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for c in clients:
            await c.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cp_processes")
    sub = parser.add_subparsers(dest="what", required=True)
    api = sub.add_parser("api")
    api.add_argument("--db", required=True)
    api.add_argument("--port", type=int, required=True)
    api.add_argument("--bus", action="store_true", help="PostgreSQL LISTEN/NOTIFY wake-ups")
    agents = sub.add_parser("agents")
    agents.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    # Agent warnings (e.g. a 409) would flood the bench's stderr; errors still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.what == "api":
        serve_api(args.db, args.port, args.bus)
    else:
        asyncio.run(_agents(json.loads(args.config.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
