"""The chaos suite's verdict after a storm: the cloud shows what the clients' accepted
requests asked for (`differences`, waited for by `converge`), and nothing is left half-way
(`unsettled`: no migration under way, each host's capacity held by its own instances only)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.chaos.killer import active_migrations
from tests.chaos.storm import Api, Model

CONVERGE_S = 240.0


def differences(api: Api, models: list[Model]) -> list[str]:
    """What the cloud shows that the accepted requests did not ask for (empty: converged)."""
    out: list[str] = []
    shown = {i["name"]: i for i in api.list("/v1/instances")}
    want = {n: d for m in models for n, d in m.instances.items()}
    if set(shown) != set(want):
        out.append(f"instances missing {set(want) - set(shown)}, extra {set(shown) - set(want)}")
    for name, desired in want.items():
        i = shown.get(name)
        if i is None or (i["desired_state"], i["state"]) == (desired, desired):
            continue
        if (i["desired_state"] != desired or i["state"] != "error"
                or not i["state_reason"]):  # an error that says why is a true state
            out.append(f"{name}: {i['state']} ({i['state_reason']}), asked {desired}")
    for what in ("private_ip", "public_ip"):
        taken = Counter(i[what] for i in shown.values() if i[what])
        out += [f"{what} {ip} given {n} times" for ip, n in taken.items() if n > 1]
    vols = {v["name"]: v for v in api.list("/v1/volumes")}
    want_vols = {n: inst for m in models for n, inst in m.volumes.items()}
    if set(vols) != set(want_vols):
        out.append(f"volumes missing {set(want_vols) - set(vols)}, extra "
                   f"{set(vols) - set(want_vols)}")
    for name, inst in want_vols.items():
        v = vols.get(name)
        state = "in-use" if inst else "available"
        if v is not None and (v["attached_to"], v["state"]) != (inst, state):
            out.append(f"volume {name}: {v['state']} on {v['attached_to']}, asked {inst}")
    snaps = {s["name"]: s["state"] for s in api.list("/v1/snapshots")}
    want_snaps = {n for m in models for n in m.snapshots}
    if snaps != dict.fromkeys(want_snaps, "available"):
        out.append(f"snapshots {snaps}, asked {sorted(want_snaps)}")
    ips = {p["ip"]: p["instance"] for p in api.list("/v1/public-ips") if not p["auto"]}
    if ips != models[0].public_ips:
        out.append(f"public IPs {ips}, asked {models[0].public_ips}")
    return out


def converge(api: Api, models: list[Model], timeout: float = CONVERGE_S,
             state_dir: Path | None = None) -> None:
    wait_none(lambda: differences(api, models), timeout, lambda: scene(api, state_dir))


def scene(api: Api, state_dir: Path | None = None, lines: int = 30) -> str:
    """What a stall needs to be diagnosed after the cloud is gone: each host's state, every
    migration, and the last lines of each agent's log (a storm's failure is rare: its one
    report must say enough)."""
    out = [f"host {h['name']}: {h['state']} (last seen {h.get('last_seen')})"
           for h in api.list("/v1/hosts")]
    out += [f"migration {m['id']} of {m['instance']} {m['source']} -> {m['destination']}: "
            f"{m['state']} ({m.get('reason', '')})" for m in api.list("/v1/migrations")]
    for log in sorted(state_dir.glob("hosts/*/agent.log")) if state_dir else []:
        out.append(f"--- {log.parent.name}/agent.log (last {lines} lines)")
        out += log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(out)


def wait_none(find: Callable[[], list[str]], timeout: float,
              explain: Callable[[], str] = str) -> None:
    """Until `find` finds nothing (agents finish their clean-ups after the API's states
    converged); else fail with what it last found, and `explain()`."""
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, "\n".join([*left, explain()])


def story(api: Api, names: list[str]) -> str:
    """The event log of each named instance (a failure's message)."""
    return "\n".join(f"{n}: {e['at']} {e['kind']} by {e['actor']}: {e['detail']}"
                     for n in names for e in api.list(f"/v1/instances/{n}/events"))


def unsettled(api: Api) -> list[str]:
    """Migrations not ended, and hosts whose held capacity is not exactly their instances'
    (a migration's claim on its destination not given back, or an instance counted twice)."""
    out = [f"migration {m['id']} of {m['instance']} still {m['state']}"
           for m in active_migrations(api)]
    held: Counter[str] = Counter()
    ram: Counter[str] = Counter()
    for i in api.list("/v1/instances"):
        if i["host"]:
            held[i["host"]] += i["vcpus"]
            ram[i["host"]] += i["ram_mib"]
    for h in api.list("/v1/hosts"):
        if (h["vcpus_used"], h["ram_mib_used"]) != (held[h["name"]], ram[h["name"]]):
            out.append(f"host {h['name']} holds {h['vcpus_used']} vCPUs, {h['ram_mib_used']} "
                       f"MiB; its instances {held[h['name']]}, {ram[h['name']]}")
    return out



def ended(api: Api) -> dict[str, int]:
    """How many migrations are in each state."""
    return dict(Counter(m["state"] for m in api.list("/v1/migrations")))
