"""A VM's serial port as a byte stream: what the browser's console types into and reads.

QEMU serves the port on a unix socket (one client at a time) and logs everything the guest
writes to `console.log` whether a client is there or not; the agent's SerialHub is that one
client and fans the stream out to every viewer.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib

READ_CHUNK = 4096


class SerialPort(abc.ABC):
    """One open connection to a VM's serial port."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next bytes the guest wrote; b"" once the port is gone (VM stopped)."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Bytes typed into the guest's serial port."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the port (idempotent)."""


class StreamSerialPort(SerialPort):
    """A serial port reached through an asyncio stream (QEMU's socket chardev)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            return
        self._writer.write(data)
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
