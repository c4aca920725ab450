"""The fake driver's serial port: a line-editing shell prompt that answers `echo`, so the
browser console and its relays are tested end to end without a VM (the QEMU driver's port is
the guest's real getty)."""

from __future__ import annotations

import asyncio

from cumulo.agent.drivers.serial import SerialPort

PROMPT = b"fake# "


class FakeSerialPort(SerialPort):
    def __init__(self, hostname: str) -> None:
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._line = bytearray()
        self.closed = False
        self._out.put_nowait(f"\r\n{hostname} (fake) serial console\r\n".encode() + PROMPT)

    async def read(self) -> bytes:
        if self.closed and self._out.empty():
            return b""
        return await self._out.get()

    async def write(self, data: bytes) -> None:
        echo = bytearray()
        for byte in data:
            if byte in (0x0D, 0x0A):
                echo += b"\r\n" + self._run(self._line.decode(errors="replace")) + PROMPT
                self._line.clear()
            elif byte in (0x08, 0x7F):
                if self._line:
                    self._line.pop()
                    echo += b"\b \b"
            else:
                self._line.append(byte)
                echo.append(byte)
        if echo and not self.closed:
            self._out.put_nowait(bytes(echo))

    def _run(self, line: str) -> bytes:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "":
            return b""
        if cmd == "echo":
            return rest.encode() + b"\r\n"
        return f"sh: {cmd}: not found\r\n".encode()

    async def close(self) -> None:
        self.vanish()

    def vanish(self) -> None:
        """The VM is gone: readers see the end of the stream."""
        if not self.closed:
            self.closed = True
            self._out.put_nowait(b"")
