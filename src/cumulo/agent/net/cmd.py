"""Running the iproute2 / nft / dnsmasq tools (the only place this package spawns processes)."""

from __future__ import annotations

import asyncio
import shutil


class NetError(Exception):
    """A data-plane operation failed; the message names the command and its error."""


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise NetError(f"{name} not found (Debian packages: iproute2, nftables, dnsmasq-base)")
    return path


async def run(*argv: str, stdin: str | None = None, check: bool = True) -> tuple[int, str]:
    """Run a command; (exit code, stdout). Raises NetError on a non-zero exit when `check`."""
    proc = await asyncio.create_subprocess_exec(
        tool(argv[0]),
        *argv[1:],
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    code = proc.returncode if proc.returncode is not None else -1
    if check and code != 0:
        msg = " ".join(err.decode(errors="replace").split())[:2000]
        raise NetError(f"{' '.join(argv[:6])} failed (exit {code}): {msg}")
    return code, out.decode(errors="replace")


async def ip_batch(netns: str, lines: list[str], check: bool = True) -> None:
    """`ip -n <netns> -batch -`; with check=False every line is tried (-force)."""
    if not lines:
        return
    flags = ["-batch", "-"] if check else ["-force", "-batch", "-"]
    await run("ip", "-n", netns, *flags, stdin="\n".join(lines) + "\n", check=check)


async def tc_batch(netns: str, lines: list[str], check: bool = True) -> None:
    if not lines:
        return
    flags = ["-batch", "-"] if check else ["-force", "-batch", "-"]
    await run("tc", "-n", netns, *flags, stdin="\n".join(lines) + "\n", check=check)
