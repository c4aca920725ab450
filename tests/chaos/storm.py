"""The chaos suite's clients: mixed operations through the REST API, each checked against a
model of what the client's accepted requests asked for, while processes are killed under them.

A request whose answer was lost (the API process died with it) is not guessed at: the client
reads the resource back and accepts either outcome (done, or not done) and nothing else, then
carries on from what is true. Each client works on resources of its own (names prefixed with
its number), so its model is exact; public IPs, which have no name, belong to client 0 alone.
"""

from __future__ import annotations

import random
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ZONE = "local-1a"
MAX_INSTANCES = 3  # per client: the zone's one host holds every client's (16 t1.nano)
MAX_VOLUMES = 3
RETRY_FOR_S = 180.0  # how long a request is retried while no API process answers


class Lost(Exception):
    """The request may or may not have been done (its connection broke after it was sent)."""


@dataclass
class Model:
    """What this client's accepted requests asked for."""

    instances: dict[str, str] = field(default_factory=dict)  # name -> desired running|stopped
    volumes: dict[str, str | None] = field(default_factory=dict)  # name -> instance attached
    snapshots: set[str] = field(default_factory=set)
    public_ips: dict[str, str | None] = field(default_factory=dict)  # ip -> instance


class Api:
    """The REST API as the cloud's client.toml names it, retried while it is down."""

    def __init__(self, state_dir: Path) -> None:
        cfg = tomllib.loads((state_dir / "client.toml").read_text())
        self.http = httpx.Client(base_url=cfg["url"], timeout=30.0,
                                 headers={"Authorization": f"Bearer {cfg['token']}"})

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The answer; Lost when the request was sent and its answer lost. A connection
        refused (no API process) is retried: nothing was sent."""
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                return self.http.request(method, path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
            except httpx.TransportError as e:
                raise Lost(str(e)) from e

    def _get(self, path: str) -> httpx.Response:
        """A GET, sent again until an API process answers it (it changes nothing)."""
        while True:
            try:
                return self.call("GET", path)
            except Lost:
                time.sleep(0.3)

    def read(self, path: str) -> dict[str, Any] | None:
        """A resource as it is (None: there is none)."""
        r = self._get(path)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def list(self, path: str) -> list[dict[str, Any]]:
        r = self._get(path)
        assert r.status_code == 200, r.text
        body: list[dict[str, Any]] = r.json()
        return body


class Client:
    """One user doing `ops` random operations, seeded. `max_instances` of its own at a time;
    `migrate`: it also moves its running instances live to another host (admin), which
    changes nothing it asked for."""

    def __init__(self, number: int, api: Api, seed: int, *,
                 max_instances: int = MAX_INSTANCES, migrate: bool = False,
                 pause_s: float = 0.0) -> None:
        self.n = number
        self.api = api
        self.max_instances, self.migrate = max_instances, migrate
        self.pause_s = pause_s  # at most, between two operations (real VMs need time to run)
        self.migrations = 0  # accepted
        self.rng = random.Random(seed * 1000 + number)
        self.model = Model()
        self.made = 0
        self.done = 0  # operations finished
        self.log: list[str] = []  # what was asked and answered, for a failure's message

    def run(self, ops: int) -> None:
        for _ in range(ops):
            choices = self._choices()
            op = self.rng.choice(choices)
            op()
            self.done += 1  # read by the killer (an int: no lock needed to read it)
            time.sleep(self.rng.uniform(0, self.pause_s))

    def _name(self, kind: str) -> str:
        self.made += 1
        return f"c{self.n}-{kind}{self.made}"

    def _choices(self) -> list[Any]:
        m = self.model
        out: list[Any] = []
        if len(m.instances) < self.max_instances:
            out += [self.create_instance] * 3
        if m.instances:
            out += [self.stop_or_start] * 3 + [self.delete_instance, self.reboot]
        if self.migrate and "running" in m.instances.values():
            out += [self.migrate_instance] * 3
        if len(m.volumes) < MAX_VOLUMES:
            out.append(self.create_volume)
        if m.volumes:
            out += [self.attach_or_detach] * 2 + [self.delete_volume, self.snapshot]
        if m.snapshots:
            out.append(self.delete_snapshot)
        if self.n == 0:
            out.append(self.public_ip_op)
        return out

    def _send(self, method: str, path: str, body: Any = None) -> httpx.Response | None:
        """The answer, or None when it was lost (the caller reads the resource back)."""
        try:
            r = self.api.call(method, path, body)
        except Lost:
            self.log.append(f"{method} {path} {body}: lost")
            return None
        self.log.append(f"{method} {path} {body}: {r.status_code}")
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text}"
        return r

    # -- instances ------------------------------------------------------------------------
    def create_instance(self) -> None:
        name = self._name("vm")
        body = {"name": name, "image": "tiny", "type": "t1.nano", "zone": ZONE,
                "client_token": uuid.uuid4().hex}
        while (r := self._send("POST", "/v1/instances", body)) is None:
            pass  # the same token again: made once, whatever happened to the first
        if r.status_code == 202:
            self.model.instances[name] = "running"
        else:  # refused (e.g. the zone is full): nothing made
            assert self.api.read(f"/v1/instances/{name}") is None, r.text

    def stop_or_start(self) -> None:
        name = self.rng.choice(sorted(self.model.instances))
        want = "stopped" if self.model.instances[name] == "running" else "running"
        action = "stop" if want == "stopped" else "start"
        r = self._send("POST", f"/v1/instances/{name}/{action}")
        if r is None or r.status_code == 409:  # lost, or refused in its current state
            shown = self.api.read(f"/v1/instances/{name}")
            assert shown is not None, name
            if r is None:
                assert shown["desired_state"] in ("running", "stopped"), shown
            else:  # a refusal changes nothing
                assert shown["desired_state"] == self.model.instances[name], (shown, r.text)
            self.model.instances[name] = shown["desired_state"]
            return
        assert r.status_code == 202, r.text
        self.model.instances[name] = want

    def reboot(self) -> None:
        """Asks for nothing the model keeps (a reboot leaves a running instance running);
        refused unless it runs, or while it is moved."""
        name = self.rng.choice(sorted(self.model.instances))
        r = self._send("POST", f"/v1/instances/{name}/reboot")
        assert r is None or r.status_code in (202, 409), r.text

    def migrate_instance(self) -> None:
        """Live migration to the other host, the scheduler's pick. A refusal (409: not
        running any more, a volume attached, already moving, no room) changes nothing."""
        shown = [i for i in self.api.list("/v1/instances") if i["name"] in self.model.instances]
        running = sorted(i["name"] for i in shown if i["state"] == "running")
        if not running:  # (as an operator would, it moves what the API shows running)
            self.log.append("migrate: nothing running")
            return
        name = self.rng.choice(running)
        r = self._send("POST", f"/v1/instances/{name}/migrate", {})
        assert r is None or r.status_code in (202, 409), r.text
        if r is not None and r.status_code == 409:
            self.log[-1] += f" {r.json()['code']}"
        self.migrations += r is not None and r.status_code == 202

    def delete_instance(self) -> None:
        name = self.rng.choice(sorted(self.model.instances))
        r = self._send("DELETE", f"/v1/instances/{name}")
        if r is None:
            shown = self.api.read(f"/v1/instances/{name}")
            if shown is not None and shown["desired_state"] != "deleted":
                return  # not done
        elif r.status_code == 409:  # refused while it is moved to another host
            assert r.json().get("code") == "migration_in_progress", r.text
            return
        else:
            assert r.status_code == 202, r.text
        del self.model.instances[name]
        for vol, inst in self.model.volumes.items():
            if inst == name:  # detached by the delete (volumes outlive their instance)
                self.model.volumes[vol] = None
        for ip, inst in self.model.public_ips.items():
            if inst == name:
                self.model.public_ips[ip] = None

    # -- volumes and snapshots ------------------------------------------------------------
    def create_volume(self) -> None:
        name = self._name("vol")
        r = self._send("POST", "/v1/volumes", {"name": name, "size_gib": 1, "zone": ZONE})
        if r is None or r.status_code != 202:  # lost, or refused (e.g. its host is down)
            made = self.api.read(f"/v1/volumes/{name}") is not None
            assert r is None or not made, r.text
            if not made:
                return
        self.model.volumes[name] = None

    def attach_or_detach(self) -> None:
        vol = self.rng.choice(sorted(self.model.volumes))
        inst = self.model.volumes[vol]
        if inst is None:
            if not self.model.instances:
                return
            target: str | None = self.rng.choice(sorted(self.model.instances))
            r = self._send("POST", f"/v1/volumes/{vol}/attach", {"instance": target})
        else:
            target = None
            r = self._send("POST", f"/v1/volumes/{vol}/detach")
        if r is not None:  # done, or refused (e.g. still being created or detached, or
            # kept on another host than the instance: local volumes attach on their host)
            assert r.status_code in (202, 409) or r.json().get("code") == "host_mismatch", \
                r.text
            if r.status_code == 202:
                self.model.volumes[vol] = target
            return
        # Lost: read back. The view's attached_to is the instance asked for, or while a
        # detach is under way the one that still holds it (state detaching).
        shown = self.api.read(f"/v1/volumes/{vol}")
        assert shown is not None, vol
        if inst is None:
            done = shown["attached_to"] == target and shown["state"] != "detaching"
            self.model.volumes[vol] = target if done else None
        else:
            done = shown["attached_to"] is None or shown["state"] == "detaching"
            assert done or shown["attached_to"] == inst, shown
            self.model.volumes[vol] = None if done else inst

    def delete_volume(self) -> None:
        vol = self.rng.choice(sorted(self.model.volumes))
        if self.model.volumes[vol] is not None:
            return  # attached: refused, and the model says so already
        r = self._send("DELETE", f"/v1/volumes/{vol}")
        if r is None:
            shown = self.api.read(f"/v1/volumes/{vol}")
            if shown is not None and shown["state"] != "deleting":
                return
        elif r.status_code == 409:  # e.g. still being detached
            return
        else:
            assert r.status_code == 202, r.text
        del self.model.volumes[vol]

    def snapshot(self) -> None:
        vol = self.rng.choice(sorted(self.model.volumes))
        name = self._name("snap")
        r = self._send("POST", f"/v1/volumes/{vol}/snapshots", {"name": name})
        if r is None or r.status_code == 409:
            if not any(s["name"] == name for s in self.api.list("/v1/snapshots")):
                return
        else:
            assert r.status_code == 202, r.text
        self.model.snapshots.add(name)

    def delete_snapshot(self) -> None:
        name = self.rng.choice(sorted(self.model.snapshots))
        r = self._send("DELETE", f"/v1/snapshots/{name}")
        if r is None:
            left = [s for s in self.api.list("/v1/snapshots") if s["name"] == name]
            if left and left[0]["state"] != "deleting":
                return
        elif r.status_code == 409:  # still being taken
            return
        else:
            assert r.status_code == 204, r.text
        self.model.snapshots.discard(name)

    # -- public IPs (client 0) ------------------------------------------------------------
    def _own_ips(self) -> dict[str, str | None]:
        """The project's allocated addresses and what holds each. One held by an instance
        the model deleted counts as free: it is let go once that instance is gone."""
        return {p["ip"]: p["instance"] if p["instance"] in self.model.instances else None
                for p in self.api.list("/v1/public-ips") if not p["auto"]}

    def public_ip_op(self) -> None:
        ips = self.model.public_ips
        free = sorted(ip for ip, inst in ips.items() if inst is None)
        held = sorted(ip for ip, inst in ips.items() if inst is not None)
        spare = sorted(set(self.model.instances) - set(ips.values()))
        ops = ["allocate"] if len(ips) < 3 else []
        ops += ["attach"] * bool(free and spare) + ["release"] * bool(free)
        ops += ["detach"] * bool(held)
        op = self.rng.choice(ops)
        if op == "allocate":
            owned_before = self._own_ips()
            r = self._send("POST", "/v1/public-ips")
            if r is None:  # lost: an address it made is ours (none other allocates)
                for ip in set(self._own_ips()) - set(owned_before):
                    ips[ip] = None
                return
            assert r.status_code == 201, r.text
            ips[r.json()["ip"]] = None
            return
        ip = self.rng.choice(free if op in ("attach", "release") else held)
        before, inst = ips[ip], self.rng.choice(spare) if op == "attach" else None
        if op == "attach":
            r = self._send("POST", f"/v1/public-ips/{ip}/attach", {"instance": inst})
        elif op == "detach":
            r = self._send("POST", f"/v1/public-ips/{ip}/detach")
        else:
            r = self._send("DELETE", f"/v1/public-ips/{ip}")
        assert r is None or r.status_code in (200, 204, 409), r.text
        if r is not None and r.status_code == 409:  # refused (e.g. still held by an
            return                                  # instance being deleted): nothing done
        now = self._own_ips()
        if op == "release":
            if ip not in now:
                del ips[ip]
            return
        assert now[ip] in (before, inst), (op, ip, before, inst, now)
        ips[ip] = now[ip]
