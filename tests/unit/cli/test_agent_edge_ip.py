"""`cumulo agent --edge-ip`: a joined host lets the edge in from the underlay, as `cumulo up`'s
own hosts do (agent/net/firewall.py); without an underlay address it is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.agent import main as agent_main
from cumulo.agent.main import AgentConfig
from tests.cli_commands import run

BASE = ["agent", "--api", "http://127.0.0.1:9", "--zone", "local-1b", "--name", "hv-7",
        "--driver", "fake"]


def test_the_edges_address_reaches_the_agents_config(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "agent.token").write_text("cma_token\n")  # joined already: no join token
    seen: list[AgentConfig] = []

    def main(cfg: AgentConfig) -> int:  # the agent's main, not run: what it was given
        seen.append(cfg)
        return 0

    monkeypatch.setattr(agent_main, "main", main)
    code, _, err = run(capfd, *BASE, "--state-dir", str(tmp_path), "--underlay-ip",
                       "10.250.0.7", "--edge-ip", "10.250.0.254")
    assert code == 0, err
    assert (seen[0].underlay_ip, seen[0].edge_ip) == ("10.250.0.7", "10.250.0.254")


@pytest.mark.parametrize("extra", [["--edge-ip", "10.250.0.254"],
                                   ["--underlay-ip", "10.250.0.7", "--edge-ip", "10.250.0.x"]])
def test_an_edge_address_without_an_underlay_or_malformed_is_refused(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        extra: list[str]) -> None:
    (tmp_path / "agent.token").write_text("cma_token\n")
    monkeypatch.setattr(agent_main, "main", lambda cfg: pytest.fail("the agent started"))
    code, _, err = run(capfd, *BASE, "--state-dir", str(tmp_path), *extra)
    assert code != 0 and err.count("\n") == 1 and err.startswith("error[invalid_"), err
