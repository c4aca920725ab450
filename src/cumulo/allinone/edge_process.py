"""The edge of an all-in-one cloud (cumulo.edge): its place on the underlay, its token and
its config, made by `cumulo up`, which then runs it as it runs the agents."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from cumulo.agent.net.names import netns_name
from cumulo.allinone import fabric
from cumulo.allinone.paths import StatePaths, write_private
from cumulo.db.engine import Database
from cumulo.services.auth import issue_token
from cumulo.services.context import Role


def edge_dir(paths: StatePaths) -> Path:
    return paths.root / "edge"


def edge_netns(paths: StatePaths) -> str:
    return netns_name(edge_dir(paths))


def address(underlay_cidr: str) -> ipaddress.IPv4Interface:
    """The edge's underlay address: the last usable one (hosts take the first ones)."""
    return fabric.edge_address(underlay_cidr)


def prepare(paths: StatePaths, db: Database, url: str, token_valid: bool | None,
            public_pool: str, cloud_domain: str) -> Path:
    """The edge's token (kept while valid: `token_valid`; None: no token yet) and config
    (`public_pool`: the loopback slice whose echo requests and names it serves)."""
    d = edge_dir(paths)
    token_file = d / "edge.token"
    if not token_valid:
        with db.session() as s:
            token = issue_token(s, Role.EDGE, description="the edge of cumulo up")
        write_private(token_file, token + "\n")
    cfg = d / "edge.json"
    write_private(cfg, json.dumps({"api_url": url, "token_file": str(token_file),
                                   "netns": edge_netns(paths), "public_pool": public_pool,
                                   "cloud_domain": cloud_domain}, indent=2))
    return cfg
