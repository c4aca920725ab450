"""Run the amazon.aws playbook of tests/integration/ansible against a test cloud."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.ec2_clients import Keys, aws_env

PLAYBOOK = Path(__file__).parent / "ansible" / "ec2_instance.yml"


def run_playbook(port: int, keys: Keys, work: Path, *, ssh: bool) -> dict[str, Any]:
    key = work / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    result = work / "result.json"
    (work / "vars.json").write_text(json.dumps({
        "endpoint": f"http://127.0.0.1:{port}", "access_key": keys.access_key_id,
        "secret_key": keys.secret_access_key, "public_key_file": str(key) + ".pub",
        "private_key_file": str(key), "result_file": str(result), "ssh": ssh}))
    env = aws_env(keys) | {"ANSIBLE_HOME": str(work / "ansible"),
                           "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
                           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "False"}
    playbook = Path(sys.executable).parent / "ansible-playbook"
    r = subprocess.run([str(playbook), "-i", "localhost,", "-e", f"@{work / 'vars.json'}",
                        str(PLAYBOOK)], env=env, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        raise AssertionError(f"ansible-playbook failed ({r.returncode}):\n{r.stdout[-6000:]}\n"
                             f"{r.stderr[-2000:]}")
    return dict(json.loads(result.read_text()))
