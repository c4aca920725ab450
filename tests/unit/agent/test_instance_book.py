"""Instance lists as deltas: the API sends a host only what changed since the list it claims
to hold, and the agent's book merges that into the complete list, equal to a full answer."""

from __future__ import annotations

from cumulo.agent.instance_book import InstanceBook
from cumulo.domain.instance import Action
from cumulo.protocol import Assignments, Observation
from cumulo.services import agents, instances
from cumulo.services.context import Principal, Role, Services
from tests.conftest import ADMIN, AGENT_HOST

AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)


def _new(svc: Services, name: str) -> str:
    req = instances.CreateInstance(name=name, image="tiny", type="t1.nano")
    return instances.create(svc, ADMIN, None, req).id


def _poll(svc: Services, book: InstanceBook) -> tuple[Assignments, Assignments]:
    """(what the API answered the book's claim, the complete list the book makes of it)."""
    answer = agents.assignments(svc, AGENT, AGENT_HOST, have=book.claim())
    whole = book.apply(answer)
    assert whole is not None
    return answer, whole


def _full(svc: Services) -> list[dict[str, object]]:
    return [a.model_dump() for a in agents.assignments(svc, AGENT, AGENT_HOST).instances]


def _merged(whole: Assignments) -> list[dict[str, object]]:
    return [a.model_dump() for a in whole.instances]


def test_after_the_first_full_list_a_host_receives_only_what_changed(svc: Services) -> None:
    book = InstanceBook()
    a = _new(svc, "a")
    answer, whole = _poll(svc, book)
    assert answer.instances_since is None and [i.id for i in answer.instances] == [a]

    b = _new(svc, "b")  # a create on this host: one instance comes, not the whole list
    answer, whole = _poll(svc, book)
    assert answer.instances_since is not None
    assert [i.id for i in answer.instances] == [b] and answer.instances_removed == []
    assert _merged(whole) == _full(svc)

    answer, whole = _poll(svc, book)  # nothing changed (a DNS-only wake-up): nothing comes
    assert answer.instances == [] and answer.instances_removed == []
    assert _merged(whole) == _full(svc)

    agents.report(svc, AGENT, AGENT_HOST, [Observation(id=a, state="running", generation=1)])
    answer, whole = _poll(svc, book)  # the state the report moved
    assert [(i.id, i.state) for i in answer.instances] == [(a, "running")]
    assert _merged(whole) == _full(svc)

    instances.act(svc, ADMIN, None, b, Action.DELETE)
    answer, whole = _poll(svc, book)
    assert [(i.id, i.desired_power) for i in answer.instances] == [(b, "deleted")]
    agents.report(svc, AGENT, AGENT_HOST, [Observation(id=b, state="deleted", generation=2)])
    answer, whole = _poll(svc, book)
    assert answer.instances == [] and answer.instances_removed == [b]
    assert [i.id for i in whole.instances] == [a] and _merged(whole) == _full(svc)


def test_a_claim_the_api_does_not_know_gets_the_whole_list(svc: Services) -> None:
    a = _new(svc, "a")
    for have in ("", "0000:1", "not-a-view", "x" * 64):
        answer = agents.assignments(svc, AGENT, AGENT_HOST, have=have)
        assert answer.instances_since is None and [i.id for i in answer.instances] == [a]


def test_a_delta_from_another_list_never_reaches_the_reconciler(svc: Services) -> None:
    _new(svc, "a")
    book = InstanceBook()
    _poll(svc, book)
    _new(svc, "b")
    delta = agents.assignments(svc, AGENT, AGENT_HOST, have=book.claim())
    assert delta.instances_since is not None
    stranger = InstanceBook()
    assert stranger.apply(delta) is None  # it holds nothing: a partial list must not pass
    assert stranger.claim() is None  # and it asks for the whole list next
    assert book.apply(delta) is not None


def test_an_api_restart_or_a_forgotten_book_means_whole_lists_again(svc: Services) -> None:
    a = _new(svc, "a")
    book = InstanceBook()
    _poll(svc, book)
    book.forget()
    assert book.claim() is None
    answer, whole = _poll(svc, book)
    assert answer.instances_since is None and [i.id for i in whole.instances] == [a]
