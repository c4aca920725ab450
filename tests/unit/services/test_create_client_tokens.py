"""A create sent again with its client token (its answer was lost: an API process died
mid-request) answers the instance the first one made, and makes nothing more; the token is
written in the create's own transaction, so it exists exactly when that instance does."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cumulo.db.tables import AddressRow, ClientTokenRow, InstanceRow, ProjectRow
from cumulo.domain.errors import Conflict, CumuloError, InvalidInput
from cumulo.services import instances
from cumulo.services.context import Services
from cumulo.services.views import InstanceView
from tests.conftest import ADMIN


def _call(name: str, token: str | None, **kw: object) -> instances.CreateCall:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano", client_token=token,
                                   **kw)  # type: ignore[arg-type]
    return instances.CreateCall(ADMIN, None, req)


def _count(svc: Services, row: type) -> int:
    with svc.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(row)) or 0)


def test_the_same_token_again_answers_the_instance_made_once(svc: Services) -> None:
    (first,) = instances.create_many(svc, [_call("web", "t-1")])
    assert isinstance(first, InstanceView)
    # Again, in a later batch and twice in one batch: the same instance, nothing more made.
    again = instances.create_many(svc, [_call("web", "t-1"), _call("web", "t-1")])
    assert [o.id for o in again if isinstance(o, InstanceView)] == [first.id, first.id]
    assert (_count(svc, InstanceRow), _count(svc, AddressRow)) == (1, 1)
    # Without a token, the same request is a second create: refused by its name.
    (dup,) = instances.create_many(svc, [_call("web", None)])
    assert isinstance(dup, Conflict) and dup.code == "name_taken"


def test_one_batch_with_a_token_twice_makes_one_instance(svc: Services) -> None:
    out = instances.create_many(svc, [_call("a", "t-2"), _call("a", "t-2"), _call("b", "t-3")])
    assert all(isinstance(o, InstanceView) for o in out), out
    ids = [o.id for o in out if isinstance(o, InstanceView)]
    assert ids[0] == ids[1] != ids[2]
    assert _count(svc, InstanceRow) == 2


@pytest.mark.parametrize(("token", "code"), [
    ("", "invalid_client_token"), ("x" * 65, "invalid_client_token"),
    ("tab\there", "invalid_client_token"), ("é", "invalid_client_token"),
])
def test_a_bad_token_is_refused_and_changes_nothing(svc: Services, token: str,
                                                    code: str) -> None:
    (out,) = instances.create_many(svc, [_call("web", token)])
    assert isinstance(out, InvalidInput) and out.code == code
    assert (_count(svc, InstanceRow), _count(svc, ClientTokenRow)) == (0, 0)


def test_a_token_reused_for_another_request_is_refused(svc: Services) -> None:
    instances.create_many(svc, [_call("web", "t-4")])
    (other,) = instances.create_many(svc, [_call("db", "t-4")])
    assert isinstance(other, CumuloError) and other.code == "idempotent_parameter_mismatch"
    (bigger,) = instances.create_many(svc, [_call("web", "t-4", disk_gib=5)])
    assert isinstance(bigger, CumuloError) and bigger.code == "idempotent_parameter_mismatch"
    assert _count(svc, InstanceRow) == 1


def test_a_failed_create_leaves_its_token_free(svc: Services) -> None:
    (failed,) = instances.create_many(svc, [
        instances.CreateCall(ADMIN, None, instances.CreateInstance(
            name="web", image="no-such-image", type="t1.nano", client_token="t-5"))])
    assert isinstance(failed, CumuloError) and failed.code == "unknown_image"
    assert _count(svc, ClientTokenRow) == 0
    # The token is free: the same token with a good request creates (the failed one made
    # nothing, so nothing to answer with).
    req = instances.CreateInstance(name="web", image="tiny", type="t1.nano", client_token="t-5")
    (made,) = instances.create_many(svc, [instances.CreateCall(ADMIN, None, req)])
    assert isinstance(made, InstanceView)


def test_a_token_whose_instance_was_deleted_says_so(svc: Services) -> None:
    call = _call("web", "t-6")
    with svc.db.session() as s:  # the answer of a create whose instance is gone since
        prj = s.scalars(select(ProjectRow).where(ProjectRow.name == "default")).one()
        s.add(ClientTokenRow(project_id=prj.id, token="t-6", action=instances.CREATE_ACTION,
                             digest=instances.token_digest(call.req),
                             result=["i-0123456789abcdef0"]))
    (again,) = instances.create_many(svc, [call])
    assert isinstance(again, Conflict) and again.code == "idempotent_instance_deleted"
    assert _count(svc, InstanceRow) == 0
