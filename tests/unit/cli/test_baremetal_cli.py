"""`cumulo baremetal node enroll --password-file`: a file that cannot be a password is refused
in one line before any request (the API is not even configured here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_commands import run

ENROLL = ["baremetal", "node", "enroll", "bm-1", "--zone", "local-1a", "--redfish",
          "http://127.0.0.1:9", "--system", "1", "--arch", "x86_64", "--vcpus", "1", "--ram",
          "128", "--disk", "1", "--username", "root", "--password-file"]


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot read"),
    (b"x" * 5000, "too large"),
    (b"\xff\xfe", "not text"),
])
def test_a_bad_password_file_is_refused_before_any_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        content: bytes | None, reason: str) -> None:
    monkeypatch.setenv("CUMULO_URL", "http://127.0.0.1:9")  # nothing listens: no request
    monkeypatch.setenv("CUMULO_TOKEN", "unused")
    pw = tmp_path / "pw"
    if content is not None:
        pw.write_bytes(content)
    status, out, err = run(capsys, *ENROLL, str(pw))
    assert status == 1 and out == ""
    assert err.startswith("error[invalid_password_file]: ") and reason in err, err
    assert err.count("\n") == 1
