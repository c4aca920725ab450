"""10,000 creates on 1,000 hosts, through the batched create path (services.instances
.create_many, as api/batches calls it), checked one by one against a model of the cloud
written apart from the scheduler: every instance lands on the host the model picks, and every
refusal says exactly what the model says, on one line."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from cumulo.config import QuotaSettings
from cumulo.db.tables import HostRow
from cumulo.domain.errors import InsufficientCapacity
from cumulo.services import hosts, instances, projects
from cumulo.services.context import Principal, Role, Services
from cumulo.services.views import InstanceView

ADMIN = Principal(role=Role.ADMIN)
ZONES = ("local-1a", "local-1b")
HOSTS = 1000
CREATES = 10_000
BATCH = 32  # api.batches.MAX_BATCH
PROJECTS = 4  # a default network per project and zone holds 4094 addresses


@dataclass
class Model:
    name: str
    zone: str
    arches: frozenset[str]
    enabled: bool
    up: bool
    vcpus: int  # allocatable
    ram: int
    vcpus_used: int = 0
    ram_used: int = 0

    def why_not(self, arch: str, vcpus: int, ram: int) -> str | None:
        if not self.enabled:
            return "disabled"
        if not self.up:
            return "down"
        if arch not in self.arches:
            return "arch"
        if self.vcpus - self.vcpus_used < vcpus:
            return "vcpus"
        if self.ram - self.ram_used < ram:
            return "ram"
        return None

    def weight(self) -> tuple[float, float]:
        return ((self.ram - self.ram_used) / self.ram, (self.vcpus - self.vcpus_used) / self.vcpus)


def explain(zone_hosts: list[Model], zone: str, arch: str, vcpus: int, ram: int) -> str:
    order = ["disabled", "down", "arch", "vcpus", "ram"]
    counts: Counter[str] = Counter()
    largest = {"vcpus": 0, "ram": 0}
    for h in zone_hosts:
        why = h.why_not(arch, vcpus, ram)
        assert why is not None
        counts[why] += 1
        if why == "vcpus":
            largest["vcpus"] = max(largest["vcpus"], h.vcpus - h.vcpus_used)
        if why == "ram":
            largest["ram"] = max(largest["ram"], h.ram - h.ram_used)

    def phrase(why: str, n: int) -> str:
        s = "s" if n == 1 else ""
        return {
            "disabled": f"{n} disabled",
            "down": f"{n} down",
            "arch": f"{n} {'does' if n == 1 else 'do'} not run {arch}",
            "vcpus": f"{n} lack{s} {vcpus} vCPUs (largest free: {largest['vcpus']})",
            "ram": f"{n} lack{s} {ram} MiB RAM (largest free: {largest['ram']})",
        }[why]

    parts = [phrase(w, n) for w, n in sorted(counts.items(),
                                            key=lambda kv: (-kv[1], order.index(kv[0])))]
    return f"no host fits: zone {zone} has {len(zone_hosts)} hosts: {', '.join(parts)}"


def _register(svc: Services) -> dict[str, Model]:
    model = {}
    now = datetime.now(UTC)
    for i in range(HOSTS):
        name = f"hv-{i:04d}"
        arches = (["arm64"], ["x86_64", "arm64"], ["x86_64"], ["x86_64"], ["x86_64"])[i % 5]
        vcpus, ram = 2 + i % 3, 2048 + 1024 * (i % 3)
        hosts.register(svc, Principal(role=Role.AGENT, host_name=name), name=name,
                       zone=ZONES[i % 2], architectures=arches, vcpus=vcpus, ram_mib=ram,
                       driver="fake", accel="fake", agent_url="")
        model[name] = Model(name=name, zone=ZONES[i % 2], arches=frozenset(arches),
                            enabled=i % 37 != 0, up=i % 41 != 0,
                            vcpus=vcpus * 4, ram=ram)  # the default ratios: 4.0 and 1.0
    with svc.db.session() as s:
        # Heard from "now" for the whole test (which outlasts HOST_DOWN_AFTER), or long ago.
        s.execute(update(HostRow).values(last_seen=now + timedelta(hours=1)))
        down = [m.name for m in model.values() if not m.up]
        s.execute(update(HostRow).where(HostRow.name.in_(down))
                  .values(last_seen=now - timedelta(hours=1)))
        s.execute(update(HostRow).where(HostRow.name.in_(
            [m.name for m in model.values() if not m.enabled])).values(disabled=True))
    return model


def test_ten_thousand_creates_on_a_thousand_hosts_each_placed_or_explained(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    if svc.db.engine.dialect.name != "sqlite":
        pytest.skip("the same code on PostgreSQL: once is enough for a test this long")
    svc.settings.cpu_allocation_ratio = 4.0  # the fixture's host-a: disabled below
    # Placement is what is checked here: no project quota may refuse first.
    svc.settings.quotas = QuotaSettings.model_validate(
        {"instances": "unlimited", "vcpus": "unlimited", "ram_mib": "unlimited"})
    with svc.db.session() as s:
        s.execute(update(HostRow).where(HostRow.name == "host-a").values(disabled=True))
    model = _register(svc)
    host_a = Model(name="host-a", zone="local-1a", arches=frozenset({"x86_64", "arm64"}),
                   enabled=False, up=True, vcpus=16, ram=4096)
    model["host-a"] = host_a
    by_zone = {z: sorted((m for m in model.values() if m.zone == z), key=lambda m: m.name)
               for z in ZONES}
    for p in range(PROJECTS):
        projects.create(svc, ADMIN, f"p{p}")
    reads = Counter[str]()
    real = hosts.capacities

    def counted(s: Any, settings: Any, zone: str | None = None) -> Any:
        reads[zone or ""] += 1
        return real(s, settings, zone)

    monkeypatch.setattr(hosts, "capacities", counted)
    rng = random.Random(18)
    calls = [instances.CreateCall(ADMIN, f"p{i % PROJECTS}", instances.CreateInstance(
        name=f"vm{i}", image="tiny", type=None, vcpus=rng.choice([1, 1, 2, 4]),
        ram_mib=rng.choice([128, 256, 512, 1024, 2048]),
        arch="arm64" if rng.random() < 0.2 else "x86_64", zone=rng.choice(ZONES)))
        for i in range(CREATES)]
    outcomes: Counter[str] = Counter()
    batches = 0
    for start in range(0, CREATES, BATCH):
        chunk = calls[start:start + BATCH]
        batches += 1
        for call, out in zip(chunk, instances.create_many(svc, chunk), strict=True):
            r = call.req
            assert r.zone is not None and r.vcpus is not None and r.ram_mib is not None
            fitting = [m for m in by_zone[r.zone] if m.why_not(r.arch, r.vcpus, r.ram_mib) is None]
            if isinstance(out, InstanceView):
                assert fitting, f"{r.name} placed on {out.host}, but the model has no room"
                best = min(fitting, key=lambda m: (-m.weight()[0], -m.weight()[1], m.name))
                assert out.host == best.name, (r.name, out.host, best.name)
                best.vcpus_used += r.vcpus
                best.ram_used += r.ram_mib
                outcomes["placed"] += 1
                continue
            assert isinstance(out, InsufficientCapacity), out
            assert not fitting, f"{r.name} refused ({out.message}) but {fitting[0].name} fits"
            assert out.code == "no_host_fits"
            assert out.message == explain(by_zone[r.zone], r.zone, r.arch, r.vcpus, r.ram_mib)
            outcomes["refused"] += 1
    # Both kinds in numbers, and the reasons they gave: the test saw the cloud fill up.
    assert outcomes["placed"] > 3000 and outcomes["refused"] > 1000, outcomes
    # Capacities are read once per batch and zone, never per create.
    assert sum(reads.values()) <= batches * len(ZONES), (reads, batches)
    with svc.db.session() as s:
        caps = {c.name: c for c in real(s, svc.settings)}
    for m in model.values():
        assert (caps[m.name].vcpus_used, caps[m.name].ram_mib_used) == (m.vcpus_used,
                                                                         m.ram_used)
        assert caps[m.name].vcpus_used <= m.vcpus and caps[m.name].ram_mib_used <= m.ram
