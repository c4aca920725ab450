"""`cumulo up` hands each agent its [host] settings through agent.json (up.prepare), and the
agent reads them back (python -m cumulo.agent --config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.agent.__main__ import _load
from cumulo.allinone import edge_process, up
from cumulo.allinone.paths import StatePaths
from cumulo.config import load_settings
from cumulo.db.engine import Database
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB
from cumulo.edge.__main__ import _load as load_edge


def _agent_config(tmp_path: Path, host_toml: str) -> Path:
    (tmp_path / "cumulo.toml").write_text(f'[host]\nname = "hv"\n{host_toml}')
    settings = load_settings(tmp_path / "cumulo.toml")
    db = Database(f"sqlite:///{tmp_path / 'cumulo.db'}")
    try:
        _, configs = up.prepare(StatePaths(tmp_path), settings, db, 8080,
                                up.plan_hosts(settings, 1))
    finally:
        db.dispose()
    return configs[0]


def test_the_tcg_translation_cache_size_reaches_the_agent(tmp_path: Path) -> None:
    cfg = _load(_agent_config(tmp_path, "tcg_tb_size_mib = 24\n"))
    assert (cfg.name, cfg.tcg_tb_size_mib) == ("hv", 24)


def test_without_a_setting_the_agent_gets_the_default(tmp_path: Path) -> None:
    assert _load(_agent_config(tmp_path, "")).tcg_tb_size_mib == DEFAULT_TB_SIZE_MIB


def test_the_agent_and_the_edge_learn_their_underlay_addresses(tmp_path: Path) -> None:
    cfg = _load(_agent_config(tmp_path, ""))
    assert (cfg.underlay_ip, cfg.edge_ip) == ("10.250.0.1", "10.250.0.254")
    edge = load_edge(tmp_path / "edge" / "edge.json")
    assert edge.api_url == "http://127.0.0.1:8080"
    assert edge.netns == edge_process.edge_netns(StatePaths(tmp_path))
    # the pool whose pings and names it serves, and the cloud's domain (its DNS's)
    assert (edge.public_pool, edge.cloud_domain) == ("127.100.0.0/16", "cumulo.internal")
    assert (tmp_path / "edge" / "edge.token").stat().st_mode & 0o777 == 0o600
    token = edge.token
    _agent_config(tmp_path, "")  # again: the token is kept while valid
    assert load_edge(tmp_path / "edge" / "edge.json").token == token


def test_hosts_leave_the_last_underlay_address_to_the_edge(tmp_path: Path) -> None:
    (tmp_path / "cumulo.toml").write_text('[network]\nunderlay_cidr = "10.250.0.0/29"\n')
    settings = load_settings(tmp_path / "cumulo.toml")
    plans = up.plan_hosts(settings, 5)
    assert [str(p.underlay) for p in plans][-1] == "10.250.0.5/29"
    assert str(edge_process.address("10.250.0.0/29")) == "10.250.0.6/29"
    with pytest.raises(ValueError, match="room for 5 hosts"):
        up.plan_hosts(settings, 6)
