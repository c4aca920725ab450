"""The translation-cache sweep's pure parts: interleaving and the choice on the numbers."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import runner, tcg_memory  # noqa: E402


def test_each_size_takes_each_position_in_turn() -> None:
    vals = (0, 32, 16)
    orders = [tcg_memory.order(vals, r) for r in range(3)]
    assert orders == [[0, 32, 16], [32, 16, 0], [16, 0, 32]]
    for i in range(3):
        assert {o[i] for o in orders} == set(vals)


def _boot(ssh: float, overhead: float) -> dict[str, float]:
    return {"ssh_s": ssh, "overhead_mib": overhead, "rss_mib": overhead + 62,
            "guest_resident_mib": 62.0}


def test_the_smallest_overhead_within_five_percent_of_the_default_boot_is_chosen() -> None:
    boots = {
        0: [_boot(4.0, 140), _boot(4.2, 140)],
        32: [_boot(4.1, 90), _boot(4.15, 92)],  # +2.5 %: allowed
        16: [_boot(4.4, 60), _boot(4.5, 60)],  # +10 %: too slow, however small
    }
    out = tcg_memory.summarize(boots)
    assert out["recommended_tb_size_mib"] == 32
    assert out["sizes"]["32"]["accel"] == "tcg,tb-size=32"
    assert out["sizes"]["0"]["accel"] == "tcg"
    assert out["sizes"]["16"]["boot_vs_default"] == 1.1
    assert out["sizes"]["32"]["overhead_mib"] == 91.0
    table = runner.render_table({"tcg_memory": {**out, "arch": "arm64", "ram_mib": 64,
                                                "rounds": 2, "accel": "tcg,tb-size=32"}})
    assert "| tcg,tb-size=16 | 4.4 s | 1.1 x | 60 MiB | 122 MiB |" in table


def test_with_nothing_fast_enough_the_default_stays() -> None:
    boots = {0: [_boot(4.0, 140)], 8: [_boot(6.0, 40)]}
    assert tcg_memory.summarize(boots)["recommended_tb_size_mib"] == 0
