"""A bare-metal deploy's NoCloud seed route (`.../deploy/TOKEN/seed`) with the fake BMC: the
seed a VM of the instance would get (its id, hostname and FQDN, the keys chosen at create,
its user-data), read back from the ISO the API serves; opened by the deploy's token only,
while that deploy waits (not a cleaning's, not a finished or expired one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.testclient import TestClient

from cumulo.api.app import create_app
from cumulo.domain.instance import Action
from cumulo.services import instances, keypairs
from cumulo.services.context import Services
from tests.baremetal_fakes import FakeBmc, deploying_node, run_pass
from tests.baremetal_fakes import token as token_of
from tests.conftest import ADMIN
from tests.unit.agent.storage.test_seed import _read

USER_DATA = b"#!/bin/sh\necho hello from metal\n"


def _public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def bmc() -> type[FakeBmc]:
    return FakeBmc.reset()


def test_the_seed_is_the_instances_and_only_its_waiting_deploy_opens_it(
        svc: Services, bmc: type[FakeBmc], tmp_path: Path) -> None:
    public = _public_key()
    keypairs.import_key(svc, ADMIN, None, "mine", public)
    deploying_node(svc, keys=["mine"], user_data=USER_DATA)
    run_pass(svc)
    token = token_of(bmc)
    api = TestClient(create_app(svc))  # no credential: the token is the only one
    r = api.get(f"/v1/baremetal/deploy/{token}/seed")
    assert r.status_code == 200, r.text
    (tmp_path / "seed.iso").write_bytes(r.content)
    label, files, _ = _read(tmp_path / "seed.iso")
    view = instances.get(svc, ADMIN, None, "metal")
    assert label == "cidata" and set(files) == {"meta-data", "user-data"}
    assert files["meta-data"].decode() == (
        f'instance-id: "{view.id}"\nlocal-hostname: "{view.fqdn}"\n'
        f'public-keys:\n  - "{public}"\n')
    assert view.fqdn.startswith("metal.")
    # the user's user-data, with cumulo's #cloud-config (hostname, fqdn) before it
    user_data = files["user-data"].decode()
    assert 'hostname: "metal"' in user_data and f'fqdn: "{view.fqdn}"' in user_data
    assert "multipart" in user_data and "IyEvYmluL3NoCmVjaG8gaGVsbG8gZnJvbSBtZXRhbAo=" in user_data

    for bad in ("0" * 64, "nothex", "A" * 64):
        r = api.get(f"/v1/baremetal/deploy/{bad}/seed")
        assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy"), r.text
    # expired with the deploy's deadline
    now = svc.clock
    later = datetime.now(UTC) + timedelta(seconds=901)
    svc.clock = lambda: later
    r = api.get(f"/v1/baremetal/deploy/{token}/seed")
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")
    svc.clock = now

    # The deploy finishes: its token opens nothing any more.
    assert api.post(f"/v1/baremetal/deploy/{token}/report", content=b"ok").status_code == 204
    assert run_pass(svc) == {"bm-1": "active"}
    r = api.get(f"/v1/baremetal/deploy/{token}/seed")
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")


def test_a_cleanings_token_opens_no_seed(svc: Services, bmc: type[FakeBmc]) -> None:
    deploying_node(svc)
    run_pass(svc)
    instances.act(svc, ADMIN, None, "metal", Action.DELETE)
    bmc.calls.clear()
    assert run_pass(svc) == {"bm-1": "cleaning"}
    wipe = token_of(bmc)
    r = TestClient(create_app(svc)).get(f"/v1/baremetal/deploy/{wipe}/seed")
    assert (r.status_code, r.json()["code"]) == (404, "unknown_deploy")
