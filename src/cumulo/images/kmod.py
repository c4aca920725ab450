"""Just enough ELF and kernel-module knowledge to build an initramfs without kmod.

Reads `.modinfo` (module name and `depends=`) and `DT_NEEDED` / `PT_INTERP` straight from
ELF files, writes a `modules.dep`-style text, and orders a set of wanted modules so that every
module comes after the modules it depends on (the order `insmod` needs).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


class ElfError(ValueError):
    """The file is not an ELF file this module understands."""


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


class ElfFile:
    """A read-only view of an ELF file's sections and program headers (32/64-bit, LE/BE)."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF":
            raise ElfError("not an ELF file")
        self.data = data
        self.is64 = data[4] == 2
        self.endian = "<" if data[5] == 1 else ">"
        e = self.endian
        if self.is64:
            (self.phoff, self.shoff) = struct.unpack_from(e + "QQ", data, 0x20)
            (self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = (
                struct.unpack_from(e + "HHHHH", data, 0x36)
            )
        else:
            (self.phoff, self.shoff) = struct.unpack_from(e + "II", data, 0x1C)
            (self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = (
                struct.unpack_from(e + "HHHHH", data, 0x2A)
            )
        self.sections = self._read_sections()

    @classmethod
    def open(cls, path: Path) -> ElfFile:
        return cls(path.read_bytes())

    def _read_sections(self) -> list[_Section]:
        raw: list[tuple[int, int, int, int, int]] = []
        e = self.endian
        for i in range(self.shnum):
            off = self.shoff + i * self.shentsize
            if self.is64:
                name, typ, _flags, _addr, offset, size, link = struct.unpack_from(
                    e + "IIQQQQI", self.data, off
                )
            else:
                name, typ, _flags, _addr, offset, size, link = struct.unpack_from(
                    e + "IIIIIII", self.data, off
                )
            raw.append((name, typ, offset, size, link))
        if not raw:
            return []
        strtab = raw[self.shstrndx]
        names = self.data[strtab[2] : strtab[2] + strtab[3]]
        return [
            _Section(_cstr(names, n), typ, offset, size, link)
            for (n, typ, offset, size, link) in raw
        ]

    def section(self, name: str) -> bytes | None:
        for s in self.sections:
            if s.name == name:
                return self.data[s.offset : s.offset + s.size]
        return None

    def interpreter(self) -> str | None:
        """The PT_INTERP path (the dynamic loader), or None for static binaries."""
        e = self.endian
        for i in range(self.phnum):
            off = self.phoff + i * self.phentsize
            if self.is64:
                typ, _flags, offset, _va, _pa, filesz = struct.unpack_from(
                    e + "IIQQQQ", self.data, off
                )
            else:
                typ, offset, _va, _pa, filesz = struct.unpack_from(e + "IIIII", self.data, off)
            if typ == 3:  # PT_INTERP
                return _cstr(self.data[offset : offset + filesz], 0)
        return None

    def _dynamic_strings(self, want: int) -> list[str]:
        """The string values of the dynamic section's entries tagged `want`, in order."""
        dyn = next((s for s in self.sections if s.type == 6), None)  # SHT_DYNAMIC
        if dyn is None:
            return []
        strsec = self.sections[dyn.link]
        strs = self.data[strsec.offset : strsec.offset + strsec.size]
        fmt, step = (self.endian + "qQ", 16) if self.is64 else (self.endian + "iI", 8)
        out: list[str] = []
        for off in range(dyn.offset, dyn.offset + dyn.size, step):
            tag, val = struct.unpack_from(fmt, self.data, off)
            if tag == 0:
                break
            if tag == want:
                out.append(_cstr(strs, val))
        return out

    def needed(self) -> list[str]:
        """The DT_NEEDED shared libraries, in order."""
        return self._dynamic_strings(1)

    def runpath(self) -> list[str]:
        """The directories of DT_RUNPATH (or the older DT_RPATH), in order."""
        dirs = self._dynamic_strings(29) or self._dynamic_strings(15)
        return [d for entry in dirs for d in entry.split(":") if d]


def _cstr(buf: bytes, start: int) -> str:
    end = buf.find(b"\0", start)
    return buf[start : end if end >= 0 else len(buf)].decode("utf-8", "replace")


def modinfo(path: Path) -> dict[str, str]:
    """The `.modinfo` key=value pairs of a kernel module (first value wins)."""
    sec = ElfFile.open(path).section(".modinfo") or b""
    out: dict[str, str] = {}
    for item in sec.split(b"\0"):
        if b"=" in item:
            k, _, v = item.decode("utf-8", "replace").partition("=")
            out.setdefault(k, v)
    return out


def normalize(name: str) -> str:
    """Module names treat '-' and '_' alike; the canonical form uses '_'."""
    return name.replace("-", "_")


def module_name_of(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return normalize(base)


def modules_dep_text(moddir: Path) -> str:
    """A `modules.dep` equivalent for the uncompressed modules under `moddir` (like depmod).

    Each line is `<relpath>: <relpath of each direct dependency>`.
    """
    by_name: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for root, _dirs, files in os.walk(moddir):
        for f in files:
            if not f.endswith(".ko"):
                continue
            p = Path(root) / f
            rel = p.relative_to(moddir).as_posix()
            name = module_name_of(rel)
            by_name[name] = rel
            raw = modinfo(p).get("depends", "")
            deps[rel] = [normalize(d) for d in raw.split(",") if d]
    lines = []
    for rel in sorted(deps):
        dep_paths = [by_name[d] for d in deps[rel] if d in by_name]
        lines.append(f"{rel}: {' '.join(dep_paths)}".rstrip())
    return "\n".join(lines) + "\n"


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Parse `modules.dep` text into {module name: (relpath, [dependency names])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or ":" not in line:
            continue
        path, _, rest = line.partition(":")
        out[module_name_of(path)] = (path, [module_name_of(d) for d in rest.split()])
    return out


class ModuleResolutionError(LookupError):
    """A wanted module is neither built in nor available as a loadable module."""


def load_order(
    deps: Mapping[str, tuple[str, list[str]]],
    wanted: Iterable[str],
    *,
    builtin: Iterable[str] = (),
    optional: Iterable[str] = (),
) -> list[str]:
    """Relative paths of `wanted` modules and all their dependencies, dependencies first.

    Built-in modules are skipped. A missing wanted module raises ModuleResolutionError unless
    it is listed in `optional`. The order is deterministic (the order of `wanted`, depth first).
    """
    builtins = {normalize(b) for b in builtin}
    optionals = {normalize(o) for o in optional}
    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtins:
            return
        if name in visiting:
            raise ModuleResolutionError(f"dependency cycle: {' -> '.join((*chain, name))}")
        if name not in deps:
            raise ModuleResolutionError(
                f"kernel module {name!r} (needed by {' -> '.join(chain) or 'the image'}) "
                "is neither built in nor available"
            )
        visiting.add(name)
        path, dep_names = deps[name]
        for d in dep_names:
            visit(d, (*chain, name))
        visiting.discard(name)
        done.add(name)
        order.append(path)

    for w in wanted:
        n = normalize(w)
        if n not in deps and n not in builtins and n in optionals:
            continue
        visit(n, ())
    return order


def builtin_names(modules_builtin_text: str) -> set[str]:
    """Module names listed in a `modules.builtin` file."""
    return {module_name_of(line.strip()) for line in modules_builtin_text.splitlines() if line}
