"""The host's image cache: image files fetched from the API over HTTP into the host's own dir.

A host never opens the API's files (nor any file outside its host dir but QEMU's and the
system's): an assignment names an image by id, and each of its files (disk; kernel and
initrd for direct kernel boot) by size and sha256. The first VM that needs a file has it
fetched (image_fetch.py: resumed with HTTP ranges, checked against the sha256, made read-only,
renamed into place only once whole and right), so a partial or corrupt file is never booted.

Layout: `<cache>/<image id>/<role>.<sha256>` (role: disk | kernel | initrd). A file is named
by its content: an image rebuilt under the same id is fetched again, and instances made from
the old content keep theirs. Instance overlays point at the cached disk (qcow2 backing file):
an instance dir records the files it was made from (`image.json`, written before the
overlay), and those are kept as long as the instance dir exists.

Garbage collection (`collect`, after each pass, cheap unless something changed): files no
assignment names and no instance dir pins are kept while their image is in the catalogue, so
the next instance of it starts without a download; the API is asked which ones are gone when
an image stops being used here, and every `check_s` while any unused one is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog

from cumulo.agent.image_fetch import FileSource, fetch_file
from cumulo.agent.storage.disks import StorageError
from cumulo.domain.ids import is_id
from cumulo.images.digest import is_sha256
from cumulo.protocol import Assignment, ImageRef

log = structlog.get_logger("cumulo.agent")

CHECK_S = 60.0  # how often unused cached images are checked against the catalogue
WAIT_S = 2.0  # how long a pass waits for a fetch before reporting "downloading"
PIN = "image.json"  # in an instance dir: the cached files its overlay and boot were made from

# image ids a host holds -> those gone from the catalogue
GoneQuery = Callable[[list[str]], Awaitable[list[str]]]
Key = tuple[str, str, str]  # (image id, role, sha256)


class ImageFetching(Exception):
    """The image is being downloaded: the VM starts at a later pass."""


class ImageCache:
    def __init__(self, root: Path, source: FileSource, gone: GoneQuery,
                 instances_dir: Path, *, check_s: float = CHECK_S) -> None:
        self.root = root
        self.source = source
        self.gone = gone
        self.instances_dir = instances_dir
        self.check_s = check_s
        self._fetches: dict[tuple[str, ...], asyncio.Task[None]] = {}  # one per image content
        self._failures: dict[tuple[str, ...], str] = {}
        self._unused: frozenset[str] = frozenset()  # image ids held, named by no assignment
        self._stale: frozenset[str] = frozenset()  # ... named, with files of older content
        self._next_check = 0.0

    # -- resolving an assignment's image ---------------------------------------------------

    def path(self, image_id: str, role: str, sha256: str) -> Path:
        if not is_id(image_id) or not is_sha256(sha256):  # both become a path
            raise StorageError(f"refusing malformed image reference {image_id!r} {sha256!r}")
        return self.root / image_id / f"{role}.{sha256}"

    def _paths(self, ref: ImageRef) -> dict[str, Path]:
        return {role: self.path(ref.id, role, f.sha256) for role, f in ref.files().items()}

    async def resolve(self, ref: ImageRef, wait_s: float = WAIT_S) -> dict[str, Path]:
        """role -> the cached, checked file, for every file of `ref`. Fetches what is missing
        (one fetch per image, however many VMs wait for it); raises ImageFetching when that
        takes longer than `wait_s`, StorageError when it failed (the next call tries again,
        resuming what was fetched)."""
        paths = self._paths(ref)
        if all(p.is_file() for p in paths.values()):
            return paths
        key = (ref.id, *(f.sha256 for f in ref.files().values()))
        if key in self._failures:
            raise StorageError(self._failures.pop(key))
        task = self._fetches.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(ref, paths))
            self._fetches[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        done, _ = await asyncio.wait({asyncio.shield(task)}, timeout=wait_s)
        if not done:
            raise ImageFetching(f"downloading image {ref.id}")
        if task.cancelled():
            raise ImageFetching(f"the download of image {ref.id} was cancelled")
        if task.exception() is not None:
            self._failures.pop(key, None)
            raise StorageError(str(task.exception()))
        return paths

    def _done(self, key: tuple[str, ...], task: asyncio.Task[None]) -> None:
        self._fetches.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            self._failures[key] = str(task.exception())

    async def _fetch(self, ref: ImageRef, paths: dict[str, Path]) -> None:
        for role, f in ref.files().items():
            if not paths[role].is_file():
                await fetch_file(self.source, ref.id, role, f, paths[role])

    async def close(self) -> None:
        for task in list(self._fetches.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # -- instance pins ------------------------------------------------------------------------

    def pin(self, instance_dir: Path, ref: ImageRef) -> None:
        """Record in `instance_dir` the cached files it is made from (before its overlay)."""
        files = {role: f.sha256 for role, f in ref.files().items()}
        tmp = instance_dir / (PIN + ".tmp")
        tmp.write_text(json.dumps({"image_id": ref.id, "files": files}))
        os.replace(tmp, instance_dir / PIN)

    def _pinned(self) -> set[Key]:
        keys: set[Key] = set()
        if not self.instances_dir.is_dir():
            return keys
        for pin in self.instances_dir.glob(f"*/{PIN}"):
            try:
                meta = json.loads(pin.read_text())
                keys |= {(meta["image_id"], role, sha) for role, sha in meta["files"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                log.warning("image_pin_unreadable", path=str(pin))
        return keys

    # -- garbage collection --------------------------------------------------------------------

    def held(self) -> dict[str, list[Path]]:
        """image id -> its cached files (partial ones included)."""
        out: dict[str, list[Path]] = {}
        if self.root.is_dir():
            for d in self.root.iterdir():
                if d.is_dir() and is_id(d.name):
                    out[d.name] = sorted(d.iterdir())
        return out

    async def collect(self, assignments: Iterable[Assignment]) -> None:
        """Remove what no assignment names, no instance pins, and the catalogue lost (or
        replaced by new content under the same id). Asks the API only when an image stopped
        being used here, or every check_s while one is held unused."""
        named = {a.image.id: a.image for a in assignments}
        held = self.held()  # a few entries: cheaper inline than through a thread
        unused = frozenset(held) - named.keys()
        now = time.monotonic()
        stale = frozenset(i for i, ref in named.items()
                          if i in held and self._has_stale(held[i], ref))
        if (not unused and not stale) or (
                unused <= self._unused and stale <= self._stale and now < self._next_check):
            # Nothing new to drop: no request, no scan of the instance dirs (every pass).
            self._unused, self._stale = unused, stale
            return
        gone: set[str] = set()
        if unused:
            try:
                gone = set(await self.gone(sorted(unused)))
            except Exception as e:  # the API is away: ask again later
                log.warning("image_catalogue_unreachable", error=str(e))
                self._next_check = now + self.check_s
                return
        self._unused, self._stale, self._next_check = unused, stale, now + self.check_s
        busy = {key[0] for key in self._fetches}
        await asyncio.to_thread(self._remove, held, named, gone - busy, self._pinned())

    def _has_stale(self, files: list[Path], ref: ImageRef) -> bool:
        wanted = {p.name for p in self._paths(ref).values()}
        return any(p.name not in wanted and not p.name.endswith(".part") for p in files)

    def _remove(self, held: dict[str, list[Path]], named: dict[str, ImageRef],
                gone: set[str], pinned: set[Key]) -> None:
        for image_id, files in held.items():
            ref = named.get(image_id)
            if ref is None and image_id not in gone:
                continue  # unused, still in the catalogue: kept for the next instance
            keep = {p.name for p in self._paths(ref).values()} if ref is not None else set()
            for p in files:
                role, _, sha = p.name.partition(".")
                sha = sha.removesuffix(".part")
                if p.name in keep or (image_id, role, sha) in pinned:
                    continue
                if ref is not None and p.name.endswith(".part") and p.name[:-5] in keep:
                    continue  # a fetch to resume
                p.unlink(missing_ok=True)
                log.info("image_file_removed", image_id=image_id, file=p.name)
            with contextlib.suppress(OSError):
                (self.root / image_id).rmdir()  # only when empty
