"""`python -m cumulo.agent --config FILE`: the host agent (started by `cumulo up`, or by hand
on a hypervisor host of a scaled-out cloud)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cumulo.agent.main import AgentConfig, main
from cumulo.domain.arch import Arch
from cumulo.domain.tcg import DEFAULT_TB_SIZE_MIB


def _load(path: Path) -> AgentConfig:
    raw = json.loads(path.read_text())
    token = Path(raw["token_file"]).read_text().strip()
    return AgentConfig(
        api_url=raw["api_url"],
        token=token,
        host_dir=Path(raw["host_dir"]),
        name=raw["name"],
        zone=raw["zone"],
        vcpus=int(raw["vcpus"]),
        ram_mib=int(raw["ram_mib"]),
        driver=raw.get("driver", "qemu"),
        accel=raw.get("accel", "auto"),
        tcg_tb_size_mib=int(raw.get("tcg_tb_size_mib", DEFAULT_TB_SIZE_MIB)),
        architectures=[Arch.parse(a) for a in raw.get("architectures", ["x86_64", "arm64"])],
        stop_timeout_s=float(raw.get("stop_timeout_s", 30.0)),
        metrics_listen=str(raw.get("metrics_listen", "")),
        metrics_token=str(raw.get("metrics_token", "")),
        resume_free_mib=int(raw.get("resume_free_mib", 64)),
        qemu_uid_base=int(raw.get("qemu_uid_base", 1_900_000_000)),
        qemu_uid_count=int(raw.get("qemu_uid_count", 65536)),
        underlay_ip=raw.get("underlay_ip"),
        storage=bool(raw.get("storage", False)),
        edge_ip=raw.get("edge_ip"),
        fake_fabric_dir=Path(raw["fake_fabric_dir"]) if raw.get("fake_fabric_dir") else None,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m cumulo.agent")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process (the supervisor) dies")
    args = parser.parse_args()
    sys.exit(main(_load(args.config), parent_pid=args.parent_pid))
