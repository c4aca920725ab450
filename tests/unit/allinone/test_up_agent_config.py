"""`cumulo up` hands each agent its [host] settings through agent.json (up.prepare), and the
agent reads them back (python -m cumulo.agent --config)."""

from __future__ import annotations

from pathlib import Path

from cumulo.agent.__main__ import _load
from cumulo.allinone import up
from cumulo.allinone.paths import StatePaths
from cumulo.config import load_settings
from cumulo.db.engine import Database
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB


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
