"""Property-based fuzzing of the REST API: the user-facing operations (/v1/...), and the
hosts' own (/v1/agent/...: a broken agent, or one of another version).

What it proves, for requests generated from the API's own OpenAPI document by schemathesis
(negative mode: wrong types, missing and extra fields, odd query strings; positive mode: values
of the right type), with string and number leaves now and then swapped for the inputs users get
wrong or attackers try (empty, "../x", very long, unicode, control characters, shell syntax,
huge and negative numbers, the names of existing resources so that a request gets past the
lookup to the validation behind it; for the agents, the ids of existing resources and mostly
their own host's name):

1. the API never answers 5xx (an unhandled exception is a defect);
2. every 4xx is application/problem+json with a non-empty snake_case `code` and a one-line
   `detail`;
3. a request answered 4xx changes nothing: every table of the database and the image store
   are the same before and after it. (An agent's report answered 200 may change state: it
   applies what it can use.)
4. every answer's status is one the OpenAPI document lists for the operation (schemathesis'
   status_code_conformance): the document tells clients what really comes back.

Runs on SQLite and PostgreSQL (the `db` fixture). Deterministic (derandomize=True): a given
tree always sends the same requests, so CI reproduces a failure. (Hypothesis also draws on
literals it finds in cumulo's source, so a change anywhere can change the sequence.) Nothing is
shrunk, as the requests share one database: a failure's message names the request instead.
Every user-facing operation gets about MAX_EXAMPLES / 94 requests per backend, every agent one
about MAX_EXAMPLES / 4 / 8; raise MAX_EXAMPLES locally to search longer.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import status_code_conformance
from sqlalchemy import select

from cumulo.db.tables import InstanceRow, SnapshotRow, VolumeRow
from cumulo.protocol import VolumeObservation
from cumulo.services import agents, download_guard, hosts
from cumulo.services.auth import issue_token
from cumulo.services.context import Principal, Role, Services
from tests.conftest import AGENT_HOST, stored_state

# The values a user gets wrong or an attacker tries.
ODD_STRINGS = [
    "", " ", ".", "..", "../x", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", "~root",
    "x" * 300, "y" * 10_000, "\ud800", "-rf", "--help", "$(reboot)", "`id`", "a;b", "a b", "a\nb",
    "a\x00b", "\t", "%2e%2e%2f", "ünïcödé", "名前", "\u202eevil", "🙂", "NaN", "null", "-1",
    "0", "1e309", "9" * 40, "0.0.0.0/0", "::/0", "10.0.0.0/33", "300.1.1.1", "http://[::1]/",
    "file:///etc/passwd", "tcp", "icmp", "bios", "arm64",
]
URL_STRINGS = [s for s in ODD_STRINGS if s != "\ud800"]
# Names the seeded state has: a request naming one gets past the lookup.
EXISTING = ["default", "tiny", "vm", "data", "lab", "web", "key", "snap", "x86_64", AGENT_HOST,
            "running", "available", "deleted"]
ODD_NUMBERS: list[Any] = [0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30), 1.5, True, None]
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_EXAMPLES = 400  # about 15 s on SQLite on a slow machine
AGENT = Principal(role=Role.AGENT, host_name=AGENT_HOST)
AnyCase = Case[Any]


@pytest.fixture
def fuzzed(api: TestClient, svc: Services, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The API with one of each resource, an image store, and URL imports that never leave
    this machine (every name resolves to loopback, which imports refuse)."""
    svc.image_store = tmp_path / "state" / "images"
    # The host's agent never beats here: the API's sweep would mark it down (and tell it in
    # the events) in the middle of the run, a change no request made.
    monkeypatch.setattr(hosts, "HOST_DOWN_AFTER", timedelta(days=1))
    # Nor does a beat of the protocol's good requests land later: written once, not noted
    # for the API's flusher (services.pending_beats), which would write it during another
    # request's check, also a change that request did not make.
    monkeypatch.setattr(hosts, "HEARTBEAT_WRITE_EVERY", timedelta(days=1))
    monkeypatch.setattr(download_guard, "resolve",
                        lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    for path, body in [
        ("/v1/instances", {"name": "vm", "image": "tiny", "type": "t1.nano"}),
        ("/v1/volumes", {"name": "data", "size_gib": 1}),
        ("/v1/networks", {"name": "lab", "cidr": "192.168.50.0/24"}),
        ("/v1/keypairs", {"name": "key"}),
        ("/v1/security-groups", {"name": "web"}),
        ("/v1/public-ips", None),
    ]:
        r = api.post(path, json=body)
        assert r.status_code in (201, 202), (path, r.text)
    # The agent reports the volume made, so that it can be snapshotted, attached, resized.
    (vol,) = agents.assignments(svc, AGENT, AGENT_HOST).volumes
    agents.report(svc, AGENT, AGENT_HOST, [], [VolumeObservation(
        id=vol.id, state="available", attached_to=None, generation=vol.generation)], [])
    r = api.post("/v1/volumes/data/snapshots", json={"name": "snap"})
    assert r.status_code == 202, r.text
    return api


def _cases(api: TestClient, token: str, agents: bool = False) -> list[st.SearchStrategy[AnyCase]]:
    """One strategy per operation and mode: the user-facing ones, or the agents' (`agents`).
    The test picks one of them first, so that every operation gets its share of the examples
    (st.one_of favours the first ones)."""
    schema = schemathesis.openapi.from_dict(api.app.openapi())  # type: ignore[attr-defined]
    ops = (schema.include(path_regex="^/v1/agent/") if agents
           else schema.include(path_regex="^/v1/").exclude(path_regex="^/v1/agent/"))
    # Fixed so that most requests get past authentication; unauthenticated ones are
    # generated all the same when the header is dropped (_send).
    auth = {"authorization": token}
    results = list(ops.get_all_operations())
    unread = [r for r in results if not isinstance(r, Ok)]
    assert not unread, unread  # an operation schemathesis cannot read would go unfuzzed
    assert results
    return [result.ok().as_strategy(generation_mode=mode, headers=auth)
            for result in results if isinstance(result, Ok)
            for mode in (GenerationMode.NEGATIVE, GenerationMode.POSITIVE)]


def _spice(data: st.DataObject, value: Any, *, url: bool = False,
           names: tuple[str, ...] = ()) -> Any:
    """`value` with some of its string and number leaves replaced by odd ones (in a URL, none
    that UTF-8 cannot encode: only JSON can send those)."""
    if isinstance(value, dict):
        return {k: _spice(data, v, url=url, names=names) for k, v in value.items()}
    if isinstance(value, list):
        return [_spice(data, v, url=url, names=names) for v in value]
    if isinstance(value, str) and data.draw(st.integers(0, 2)) == 0:
        if len(names) > 0 and data.draw(st.booleans()):
            return data.draw(st.sampled_from(names))
        return data.draw(st.sampled_from((URL_STRINGS if url else ODD_STRINGS) + EXISTING))
    if isinstance(value, int | float) and data.draw(st.integers(0, 2)) == 0:
        return data.draw(st.sampled_from(ODD_NUMBERS))
    return value


def _segment(value: Any, quoted: bool = False) -> str:
    text = str(value) if quoted else quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text


def _query(query: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Query parameters as a browser would send them: repeated keys for lists, JSON text for
    anything else that is not a string."""
    out: list[tuple[str, str]] = []
    for key, value in (query or {}).items():
        for v in value if isinstance(value, list) else [value]:
            out.append((key, v if isinstance(v, str) else json.dumps(v)))
    return out


def _send(api: TestClient, case: AnyCase, data: st.DataObject, token: str,
          names: tuple[str, ...], host: str | None) -> tuple[str, Any]:
    # Generated path parameters come percent-encoded; odd ones are encoded here, dots of a
    # dot segment too: a client resolves a literal one before sending (RFC 3986), so a server
    # only ever sees it encoded.
    case.path_parameters = {
        k: _segment(v) if v != old else _segment(v, quoted=True)
        for (k, old), v in zip(case.path_parameters.items(),
                               _spice(data, list(case.path_parameters.values()), url=True,
                                      names=names),
                               strict=True)
    }
    if host and "name" in case.path_parameters and data.draw(st.integers(0, 9)):
        case.path_parameters["name"] = host  # past the 403 that another host's name gets
    case.query = _spice(data, case.query, url=True, names=names)
    if case.query and "wait" in case.query:
        case.query["wait"] = 0  # a long-poll would wait for a change up to 30 s
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if data.draw(st.sampled_from([True] * 19 + [False])):  # a few go without a token
        headers["Authorization"] = token
    kwargs: dict[str, Any] = {}
    body = case.body
    if case.media_type == "application/json" and not isinstance(body, bytes):
        body = _spice(data, body, names=names)
        if isinstance(body, dict) and "wait" in body:
            body["wait"] = 0  # as for the query's
        kwargs["content"] = json.dumps(body, allow_nan=True)
        headers["Content-Type"] = "application/json"
    elif case.media_type is not None and not isinstance(body, NotSet):
        raw = getattr(body, "data", body)
        kwargs["content"] = raw if isinstance(raw, bytes) else str(raw).encode()
        headers["Content-Type"] = case.media_type
    # The client's own default header must not put the token back.
    saved = api.headers.pop("Authorization")
    sent = (f"{case.method} {case.formatted_path} query={_query(case.query)!r:.300} "
            f"body={kwargs.get('content', b'')!r:.300} auth={'Authorization' in headers}")
    try:
        r = api.request(case.method, case.formatted_path, params=_query(case.query),
                        headers=headers, **kwargs)
    except Exception as e:  # the test client re-raises what the app did not handle (a 500)
        raise AssertionError(f"{sent} -> unhandled {e!r:.500}") from e
    finally:
        api.headers["Authorization"] = saved
    return sent, r


def _check(sent: str, r: Any, before: list[Any], svc: Services, case: AnyCase) -> list[Any]:
    after = stored_state(svc)
    assert r.status_code < 500, f"{sent} -> {r.status_code} {r.text[:500]}"
    try:
        case.validate_response(r, checks=[status_code_conformance])
    except Exception as e:  # schemathesis' failure (a group of them), readable with the request
        raise AssertionError(f"{sent} -> {r.status_code} {r.text[:300]}: {e}") from None
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json", \
            f"{sent} -> {r.status_code} {r.headers['content-type']} {r.text[:300]}"
        problem = r.json()
        assert CODE.match(problem.get("code") or ""), f"{sent} -> {problem}"
        detail = problem.get("detail")
        assert isinstance(detail, str) and detail and "\n" not in detail and "\r" not in detail, \
            f"{sent} -> {problem!r:.1000}"
        assert after == before, f"{sent} -> {r.status_code} {problem} changed the state"
    return after


def _fuzz(api: TestClient, svc: Services, token: str, agents: bool) -> None:
    state = [stored_state(svc)]
    names: tuple[str, ...] = ()
    if agents:  # the ids of what exists: an observation naming one gets past the lookup
        with svc.db.session() as s:
            names = tuple(i for t in (InstanceRow, VolumeRow, SnapshotRow)
                          for i in s.scalars(select(t.id)))

    @settings(max_examples=MAX_EXAMPLES if not agents else MAX_EXAMPLES // 4, deadline=None,
              derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases=st.sampled_from(_cases(api, token, agents)), data=st.data())
    def one_request(cases: st.SearchStrategy[AnyCase], data: st.DataObject) -> None:
        case = data.draw(cases)
        sent, r = _send(api, case, data, token, names, AGENT_HOST if agents else None)
        state[0] = _check(sent, r, state[0], svc, case)

    one_request()


def test_bad_input_is_refused_cleanly_and_changes_nothing(fuzzed: TestClient,
                                                          svc: Services) -> None:
    _fuzz(fuzzed, svc, fuzzed.headers["Authorization"], agents=False)


def test_the_agents_protocol_takes_odd_input_without_failing(fuzzed: TestClient,
                                                             svc: Services) -> None:
    """The same for the hosts' own API (a broken agent, or one of another version): its
    reports may change state when they are answered 200, so only refusals are compared."""
    with svc.db.session() as s:
        token = f"Bearer {issue_token(s, Role.AGENT, host_name=AGENT_HOST)}"
    _fuzz(fuzzed, svc, token, agents=True)


# --- what the fuzzer found, one focused test each ----------------------------------------

def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert "\n" not in body["detail"]
    return body


def test_unknown_paths_and_methods_are_problems_too(api: TestClient) -> None:
    # Starlette's router answered these itself, as {"detail": "Not Found"} (not problem+json).
    _problem(api.post("/v1/instances//reboot"), 404, "not_found")
    _problem(api.get("/v1/no-such-thing/%0A"), 404, "not_found")
    _problem(api.delete("/v1/projects/"), 404, "not_found")  # no redirect to /v1/projects
    r = api.delete("/v1/projects")
    _problem(r, 405, "method_not_allowed")
    assert r.headers["allow"]  # the methods the path takes, kept from the router


def test_nul_and_unpaired_surrogates_are_refused_before_any_service(
    api: TestClient, svc: Services
) -> None:
    # On PostgreSQL a NUL failed the query (500); on both, a surrogate failed UTF-8 (500).
    before = stored_state(svc)
    assert _problem(api.get("/v1/instances/a%00b"), 400, "invalid_character")["detail"] \
        .startswith("ref:")
    _problem(api.get("/v1/volumes", params={"project": "x\x00"}), 400, "invalid_character")
    for body in ('{"name": "web", "description": "a\\ud800"}',
                 '{"name": "web", "description": "a\\u0000"}',
                 '{"name": "\\udfff"}'):
        r = api.post("/v1/security-groups", content=body,
                     headers={"Content-Type": "application/json"})
        _problem(r, 400, "invalid_character")
    assert stored_state(svc) == before


def test_details_stay_one_short_line_whatever_they_echo(api: TestClient) -> None:
    # A JSON key is echoed in a validation error's location: it held a newline.
    detail = _problem(api.post("/v1/instances", json={"name": "a", "image": "tiny",
                                                      "tags": {"a\nb\r": 1}}),
                      400, "invalid_input")["detail"]
    assert "\r" not in detail
    detail = _problem(api.post("/v1/keypairs", json={"name": "x" * 10_000}),
                      400, "invalid_name")["detail"]
    assert len(detail) <= 500
