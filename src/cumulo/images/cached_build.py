"""Derived images built once and kept in the image cache (the whole-disk tiny image, the
bare-metal deploy ISO): a build goes to `<kind>/<arch>.<digest16>/`, made in a temp dir and
renamed into place under a lock, with `build.json` recording the inputs digest it came from.
A cached build is reused while its digest and files are intact; new inputs build anew.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cumulo.images.debs import ImageBuildError, require_tool

BUILD_FILE = "build.json"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created if absent) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _intact(path: Path, digest: str, files: Sequence[str]) -> bool:
    try:
        doc = json.loads((path / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return doc.get("inputs_sha256") == digest and all((path / f).is_file() for f in files)


def ensure_built(
    kind_dir: Path,
    name: str,
    digest: str,
    files: Sequence[str],
    build: Callable[[Path, Path], dict[str, object]],
) -> Path:
    """The build directory for `name` (e.g. "x86_64") with inputs `digest`, built now by
    `build(work, out)` if no intact one exists. `build` writes `files` into `out` (and may use
    `work` as scratch) and returns facts recorded in `build.json`."""
    final = kind_dir / f"{name}.{digest[:16]}"
    if _intact(final, digest, files):
        return final
    with locked(kind_dir / f".{name}.lock"):
        if _intact(final, digest, files):
            return final
        work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=kind_dir))
        try:
            out = work / "out"
            out.mkdir()
            facts = build(work, out)
            doc = {**facts, "inputs_sha256": digest}
            (out / BUILD_FILE).write_text(json.dumps(doc, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            out.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def read_facts(path: Path) -> dict[str, object]:
    doc = json.loads((path / BUILD_FILE).read_text())
    if not isinstance(doc, dict):
        raise ImageBuildError(f"{path / BUILD_FILE} is not a JSON object")
    return doc


def run(cmd: list[str], env: dict[str, str] | None = None, ok: Sequence[int] = (0,)) -> None:
    """Run a host tool; an exit status not in `ok` raises ImageBuildError with its stderr."""
    argv = [require_tool(cmd[0]), *cmd[1:]]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in ok:
        raise ImageBuildError(f"{cmd[0]} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def package_version(name: str) -> str:
    """The installed version of a Debian package (part of an inputs digest)."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise ImageBuildError(f"the image builder needs the Debian package {name!r} installed")
    return proc.stdout
