"""A thin async wrapper over QEMU's own QMP library: one connection per command.

Connect with a timeout, run one command, always disconnect. Every failure becomes a
DriverError whose message names the socket and the command. QEMU's QMP monitor serves one
client at a time, so callers should not hold connections open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from cumulo.agent.counters import QMP_ERRORS
from cumulo.agent.drivers.base import DriverError

# qemu.qmp logs every disconnect/EOF at WARNING/ERROR; our callers report failures themselves.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


async def qmp_execute(
    sock: Path,
    command: str,
    arguments: dict[str, Any] | None = None,
    *,
    timeout: float = 1.0,
) -> Any:
    """Run one QMP command on the monitor at `sock` and return its "return" value.

    `quit` is special: QEMU closes the connection right after (or even before) answering,
    so a lost connection after sending it counts as success.
    """
    client = QMPClient(f"cumulo-{sock.parent.name}")
    try:
        try:
            await asyncio.wait_for(client.connect(str(sock)), timeout)
        except (QMPError, OSError, TimeoutError) as exc:
            QMP_ERRORS.labels(command=command).inc()
            raise DriverError(f"cannot connect to QMP socket {sock}: {_describe(exc)}") from exc
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout)
        except (QMPError, OSError, TimeoutError, EOFError) as exc:
            if command == "quit" and not isinstance(exc, TimeoutError):
                return {}
            QMP_ERRORS.labels(command=command).inc()
            raise DriverError(f"QMP {command} on {sock} failed: {_describe(exc)}") from exc
    finally:
        await _disconnect(client)


async def _disconnect(client: QMPClient) -> None:
    with contextlib.suppress(QMPError, OSError, TimeoutError, EOFError):
        await asyncio.wait_for(client.disconnect(), 1.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or getattr(exc, "exc", None)
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text
