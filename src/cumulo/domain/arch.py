"""CPU architectures cumulo offers."""

from __future__ import annotations

from enum import StrEnum

from cumulo.domain.errors import InvalidInput


class Arch(StrEnum):
    X86_64 = "x86_64"
    ARM64 = "arm64"

    @classmethod
    def parse(cls, value: str) -> Arch:
        aliases = {"amd64": cls.X86_64, "aarch64": cls.ARM64}
        if value in aliases:
            return aliases[value]
        try:
            return cls(value)
        except ValueError:
            raise InvalidInput(
                f"unknown architecture {value!r} (expected x86_64 or arm64)",
                code="unknown_arch",
            ) from None

    @property
    def qemu_binary(self) -> str:
        return "qemu-system-x86_64" if self is Arch.X86_64 else "qemu-system-aarch64"

    @property
    def debian_name(self) -> str:
        return "amd64" if self is Arch.X86_64 else "arm64"
