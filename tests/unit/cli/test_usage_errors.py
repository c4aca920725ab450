"""The CLI's own usage errors (unknown option, bad number, missing argument) are one line on
stderr, `error[usage]: ... (see cumulo COMMAND --help)`, exit status 2, in every command: the
commands are read from the Typer app, so a new one is covered without a word here."""

from __future__ import annotations

import re
import subprocess
import sys
import types
import typing
from typing import Any

import pytest

from tests.cli_commands import commands, run

CUMULO = [sys.executable, "-m", "cumulo.cli.main"]
LINE = re.compile(r"^error\[usage\]: (?P<message>[^\n]+) \(see (?P<path>cumulo[a-z -]*) --help\)$")


COMMANDS = list(commands())


def _numeric(command: Any, name: str) -> bool:
    """The command function's parameter `name` is an int or a float (or one or None)."""
    hint = typing.get_type_hints(command.callback)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint in (int, float)


def _filled(command: Any, but: str | None = None) -> list[str]:
    """Every required argument and option of `command` with a value of the right kind, except
    `but`'s."""
    args: list[str] = []
    for p in command.params:
        if p.name == but or not p.required:
            continue
        value = "1" if _numeric(command, p.name) else "x"
        args += [value] if p.param_type_name == "argument" else [p.opts[0], value]
    return args


def _one_usage_line(status: int, out: str, err: str, path: list[str]) -> str:
    assert status == 2, err
    assert out == ""
    match = LINE.match(err.removesuffix("\n"))
    assert match is not None, err
    assert match["path"] == " ".join(["cumulo", *path])
    return match["message"]


def test_the_commands_are_found() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"instance create", "volume attach", "image import", "ssh", "up"} <= names
    assert len(names) > 40


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_says_its_usage_errors_in_one_line(
    capfd: pytest.CaptureFixture[str], path: list[str], command: Any
) -> None:
    message = _one_usage_line(*run(capfd, *path, "-x"), path)
    assert message == "no such option: -x"
    for p in command.params:
        if p.required and p.param_type_name == "argument":
            message = _one_usage_line(*run(capfd, *path, *_filled(command, but=p.name)), path)
            # (positional: the ones after it move up, so the last one is the one missing)
            assert message.startswith("missing argument '"), message
        elif p.param_type_name == "option" and _numeric(command, p.name):
            argv = [*path, *_filled(command, but=p.name), p.opts[0], "abc"]
            message = _one_usage_line(*run(capfd, *argv), path)
            assert message.startswith(f"invalid value for '{p.opts[0]}'"), message


@pytest.mark.parametrize(("argv", "message"), [
    (["instance", "create", "-x"], "no such option: -x"),
    (["instance", "create", "web", "--image", "tiny", "--vcpus", "abc"],
     "invalid value for '--vcpus': "),
    (["volume", "attach", "data"], "missing argument 'instance'"),
    (["--bogus", "zone", "list"], "no such option: --bogus"),
])
def test_through_the_cumulo_process(argv: list[str], message: str) -> None:
    r = subprocess.run([*CUMULO, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    command = " ".join(["cumulo", *(a for a in argv if not a.startswith("-"))][:3])
    if argv[0].startswith("-"):
        command = "cumulo"
    assert line.startswith(f"error[usage]: {message}"), line
    assert line.endswith(f" (see {command} --help)"), line


def test_help_and_a_bare_group_still_print_help() -> None:
    r = subprocess.run([*CUMULO, "instance", "create", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--image" in r.stdout and r.stderr == ""
    r = subprocess.run([*CUMULO, "volume"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "attach" in r.stdout and "error[" not in r.stderr
