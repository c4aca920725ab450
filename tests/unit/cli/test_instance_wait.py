"""`cumulo instance stop|start|reboot --wait` ends with the action's failure when the
instance's reason says it failed (a bare-metal server whose BMC failed shows the state its
machine is in: it would never reach the awaited one, or is in it already)."""

from __future__ import annotations

from typing import Any

import pytest

from cumulo.cli.output import CliState
from tests.cli_commands import run


class Api:
    """The API's answers: the request taken, then the instance as the conductor left it."""

    def __init__(self, shown: dict[str, Any]) -> None:
        self.shown = shown

    def post(self, path: str, *parts: str) -> dict[str, Any]:
        return {"id": "i-1", "name": "metal", "state": "stopping", "state_reason": ""}

    def get(self, path: str, *parts: str) -> dict[str, Any]:
        return self.shown


@pytest.mark.parametrize(("action", "state"), [("stop", "running"), ("reboot", "running")])
def test_wait_ends_with_the_failure_the_instance_shows(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        action: str, state: str) -> None:
    why = f"{action} failed: the BMC at http://10.0.9.12 refused to power: HTTP 500"
    api = Api({"id": "i-1", "name": "metal", "state": state, "state_reason": why})
    monkeypatch.setattr(CliState, "client", lambda self: api)
    status, out, err = run(capsys, "instance", action, "metal", "--wait", "--timeout", "5")
    assert (status, out) == (1, "")
    assert err == f"error[{action}_failed]: instance metal: {why}\n"
