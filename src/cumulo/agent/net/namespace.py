"""The host's network namespace: create, delete, and enter it from a thread (setns)."""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cumulo.agent.net.cmd import NetError, run

A = TypeVar("A")
T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

# Set once when the namespace is created. ip_forward=0: the namespace never routes between
# networks (a host that the edge reaches turns it on, see host_network.py: its firewall's
# forward chain then decides what passes, and nothing passes between networks either).
# networks. bridge-nf-call-*: bridged IPv4 goes through the inet table (stateful firewall;
# this kernel has no nf_conntrack_bridge, so the bridge family cannot track connections).
SYSCTLS = (
    "net.ipv4.ip_forward=0",
    "net.bridge.bridge-nf-call-iptables=1",
    "net.bridge.bridge-nf-call-ip6tables=1",
    "net.bridge.bridge-nf-call-arptables=0",
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


async def ensure(name: str) -> None:
    """The namespace exists with lo up and the sysctls set (idempotent)."""
    if not exists(name):
        await run("ip", "netns", "add", name)
        await run("ip", "netns", "exec", name, "sysctl", "-q", "-w", *SYSCTLS)
    await run("ip", "-n", name, "link", "set", "lo", "up")


async def delete(name: str) -> None:
    if exists(name):
        await run("ip", "netns", "delete", name)


def enter(name: str) -> None:
    """Move the CALLING THREAD into the namespace (Python 3.11 has no os.setns).

    Sockets created afterwards by this thread belong to the namespace for their lifetime.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetError(f"setns into {name} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


class Threads:
    """Worker threads inside a namespace: what they run (a socket they make) is there."""

    def __init__(self, netns: str, workers: int = 4) -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"netns-{netns}",
                                        initializer=enter, initargs=(netns,))

    async def call(self, fn: Callable[[A], T], arg: A) -> T:
        """Run `fn(arg)` in a thread that is inside the namespace."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
