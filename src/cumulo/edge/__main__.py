"""`python -m cumulo.edge --config FILE`: the edge (started by `cumulo up`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cumulo.edge.main import EdgeConfig, main


def _load(path: Path) -> EdgeConfig:
    raw = json.loads(path.read_text())
    return EdgeConfig(api_url=str(raw["api_url"]),
                      token=Path(raw["token_file"]).read_text().strip(),
                      netns=str(raw["netns"]),
                      public_pool=str(raw["public_pool"]) if raw.get("public_pool") else None,
                      cloud_domain=str(raw.get("cloud_domain", "cumulo.internal")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m cumulo.edge")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process (the supervisor) dies")
    args = parser.parse_args()
    sys.exit(main(_load(args.config), parent_pid=args.parent_pid))
