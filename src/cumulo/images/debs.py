"""Fetch and unpack Debian packages without installing them (apt-get download + dpkg-deb -x)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class ImageBuildError(RuntimeError):
    """Building a guest image failed (the message says why and what to do)."""


class ToolMissing(ImageBuildError):
    """A host tool the image builder needs is not installed."""


_TOOL_PACKAGES = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "mformat": "mtools",
    "mcopy": "mtools",
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pkg = _TOOL_PACKAGES.get(name, name)
        raise ToolMissing(
            f"the image builder needs {name!r}, which is not on PATH (install the Debian "
            f"package {pkg!r})"
        )
    return path


def _run(cmd: list[str], *, cwd: Path | None = None) -> str:
    require_tool(cmd[0])
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


@dataclass(frozen=True)
class DebPackage:
    """One package version as apt knows it."""

    name: str
    arch: str
    version: str
    sha256: str
    depends: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _fields(stanza: str) -> dict[str, str]:
    out: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            out[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def show_many(specs: Sequence[tuple[str, str]]) -> list[DebPackage]:
    """Candidate versions of (package, Debian arch) pairs, in one `apt-cache show` call."""
    text = _run(["apt-cache", "show", "--no-all-versions", *(f"{n}:{a}" for n, a in specs)])
    found: dict[tuple[str, str], DebPackage] = {}
    for stanza in text.strip().split("\n\n"):
        f = _fields(stanza)
        if "Package" not in f or "Version" not in f or "SHA256" not in f:
            continue
        arch = f.get("Architecture", "")
        pkg = DebPackage(
            name=f["Package"],
            arch=arch,
            version=f["Version"],
            sha256=f["SHA256"],
            depends=f.get("Depends", ""),
        )
        found.setdefault((pkg.name, arch), pkg)
        if arch == "all":
            for n, a in specs:
                if n == pkg.name:
                    found.setdefault((n, a), pkg)
    missing = [f"{n}:{a}" for n, a in specs if (n, a) not in found]
    if missing:
        raise ImageBuildError(
            f"apt knows no candidate for {', '.join(missing)} (run apt-get update; for foreign "
            "architectures run dpkg --add-architecture first)"
        )
    return [found[s] for s in specs]


# What `apt-cache show`'s candidates are a function of: the package lists, the sources,
# preferences and configuration, the foreign architectures, the installed versions.
_APT_STATE = ("/var/lib/apt/lists", "/etc/apt", "/var/lib/dpkg/arch", "/var/lib/dpkg/status")


def apt_state_key(roots: Sequence[str] = _APT_STATE) -> str:
    """A digest of the names, sizes and mtimes of the files apt's answers depend on: equal
    keys mean `apt-cache show` would answer the same (it costs over a second a call here)."""
    entries: list[str] = []
    for root in roots:
        base = Path(root)
        paths = [base] if base.is_file() else sorted(q for q in base.rglob("*") if q.is_file())
        for q in paths:
            try:
                st = q.stat()
            except OSError:
                continue
            entries.append(f"{q}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def load_resolved(path: Path, apt_key: str) -> list[DebPackage] | None:
    """The packages `save_resolved` kept in `path` for this apt state (apt_state_key and the
    package list), or None: each `apt-cache` run costs over a second here."""
    try:
        doc = json.loads(path.read_text())
        if doc["apt_state"] != apt_key:
            return None
        return [DebPackage(**p) for p in doc["packages"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, from an older cumulo, or damaged: ask apt again


def save_resolved(path: Path, apt_key: str, pkgs: Sequence[DebPackage]) -> None:
    doc = {"apt_state": apt_key, "packages": [dataclasses.asdict(p) for p in pkgs]}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache only means asking apt each time


def show(name: str, arch: str) -> DebPackage:
    """The candidate version of `name` for Debian architecture `arch` (apt-cache show)."""
    return show_many([(name, arch)])[0]


_KERNEL_DEP = re.compile(r"(linux-image-[0-9][^\s,(|]*)")


def kernel_of(meta: DebPackage) -> str:
    """The versioned kernel package a `linux-image-cloud-<arch>` metapackage depends on."""
    m = _KERNEL_DEP.search(meta.depends)
    if m is None:
        raise ImageBuildError(
            f"cannot find the versioned kernel in {meta.name} Depends: {meta.depends!r}"
        )
    return m.group(1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(pkg: DebPackage, deb_dir: Path) -> Path:
    """The .deb for `pkg` in `deb_dir`, downloading it with apt-get if not cached.

    Downloads go to a private temp dir and are renamed into place after the SHA256 check, so
    concurrent callers never see a partial file.
    """
    deb_dir.mkdir(parents=True, exist_ok=True)
    target = deb_dir / pkg.filename
    if target.exists() and _sha256(target) == pkg.sha256:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=deb_dir))
    try:
        os.chmod(tmp, 0o755)  # let apt's sandbox user write here if it wants to
        _run(["apt-get", "download", "-q", f"{pkg.name}:{pkg.arch}={pkg.version}"], cwd=tmp)
        got = [p for p in tmp.iterdir() if p.suffix == ".deb"]
        if len(got) != 1:
            raise ImageBuildError(f"apt-get download {pkg.name} produced {got!r}")
        if _sha256(got[0]) != pkg.sha256:
            raise ImageBuildError(f"SHA256 mismatch for downloaded {got[0].name}")
        os.replace(got[0], target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def extract(deb: Path, dest: Path) -> Path:
    """Unpack a .deb's data into `dest` (no maintainer scripts, no root install)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


def host_debian_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).strip()
