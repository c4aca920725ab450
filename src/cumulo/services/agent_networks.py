"""The networks in a host's long-poll answer: each with its DNS records, only the changes
since what the host claims to hold when the DNS journal can say, else every record."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import NetworkRow, ProjectRow
from cumulo.protocol import DnsRecord, NetworkRef
from cumulo.services import segments
from cumulo.services.agent_memory import MAX_NETWORK_FACTS, NetworkFacts
from cumulo.services.context import Services

# Claims past this many are ignored (those networks get full lists): they ride in the query
# string of every long-poll, whose length servers limit.
MAX_DNS_CLAIMS = 100


def parse_dns_claims(claims: list[str]) -> dict[str, tuple[str, int]]:
    """`NETWORK:EPOCH:VERSION` strings (what a host holds) -> {network: (epoch, version)}.
    A malformed claim is ignored: that network's full list is sent."""
    out: dict[str, tuple[str, int]] = {}
    for c in claims[:MAX_DNS_CLAIMS]:
        parts = c.split(":")
        if len(parts) == 3 and parts[2].isdigit() and len(parts[2]) < 19:
            out[parts[0]] = (parts[1], int(parts[2]))
    return out


def networks(s: Session, svc: Services, host_id: str, network_ids: set[str],
             claims: dict[str, tuple[str, int]]) -> list[NetworkRef]:
    """The host's networks, each with its DNS records (see dns_journal)."""
    svc.notifier.answering(host_id)  # this answer brings what a due wake-up was for
    journal = svc.notifier.dns
    journal.subscribe(host_id, network_ids)  # first: a change after this wakes the host
    deltas = {}
    full: dict[str, int] = {}
    for n in network_ids:
        claim = claims.get(n)
        delta = journal.since(n, *claim) if claim else None
        if delta is None:
            full[n] = journal.version(n)  # read before the query: never stale
        else:
            deltas[n] = delta
    records = _full_records(s, svc, full) if full else {}
    out = []
    for net in _network_facts(s, svc, network_ids):
        d = deltas.get(net.id)
        # Every field given: model_construct inspects a default factory's signature per call.
        out.append(NetworkRef.model_construct(
            id=net.id, vni=net.vni, project=net.project, cidr=net.cidr, gateway=net.gateway,
            dns_domain=f"{net.project}.{net.zone}.{svc.settings.cloud_domain}",
            records_epoch=journal.epoch,
            records=d.added if d else records.get(net.id, []),
            records_removed=d.removed if d else [],
            records_version=d.version if d else full[net.id],
            records_since=claims[net.id][1] if d else None))
    return out


def _full_records(s: Session, svc: Services, versions: dict[str, int]
                  ) -> dict[str, list[DnsRecord]]:
    """A DNS record for every instance on these networks, wherever it runs. `versions` were
    read from the journal before this call: the lists hold at least those changes. Hosts
    that need a network's full list (first time, or after an API restart) share one read per
    change."""
    memory = svc.notifier.agents
    with memory.records_lock:
        out: dict[str, list[DnsRecord]] = {}
        missing: dict[str, int] = {}
        for n, version in versions.items():
            hit = memory.records.get(n)
            if hit is not None and hit[0] == version:
                out[n] = hit[1]
            else:
                missing[n] = version
    if not missing:
        return out
    found = segments.records(s, svc, missing)
    fresh: dict[str, list[DnsRecord]] = {n: found.get(n, []) for n in missing}
    with memory.records_lock:
        for n, version in missing.items():
            memory.records[n] = (version, fresh[n])
    return out | fresh


def _network_facts(s: Session, svc: Services, network_ids: set[str]) -> list[NetworkFacts]:
    """The facts of these networks (those that exist), ordered by id. None of them ever
    changes (ids are never reused), so the process keeps those it has read."""
    memory = svc.notifier.agents
    with memory.facts_lock:
        known = {n: memory.facts[n] for n in network_ids if n in memory.facts}
    missing = network_ids - known.keys()
    if missing:
        for net, project in s.execute(select(NetworkRow, ProjectRow.name)
                                      .join(ProjectRow, ProjectRow.id == NetworkRow.project_id)
                                      .where(NetworkRow.id.in_(missing))):
            known[net.id] = NetworkFacts(id=net.id, project=project, zone=net.zone,
                                         cidr=net.cidr, gateway=net.gateway, vni=net.vni)
        with memory.facts_lock:
            if len(memory.facts) > MAX_NETWORK_FACTS:
                memory.facts.clear()
            memory.facts.update(known)
    return [known[n] for n in sorted(known)]
