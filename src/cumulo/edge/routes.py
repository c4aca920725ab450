"""The edge namespace's routes: one /32 per instance with a public address, via the underlay
address of the host that runs it (`proto static`: the only routes of that kind in the
namespace are the edge's, so stale ones are told apart from the underlay's own)."""

from __future__ import annotations

import json

from cumulo.agent.net.cmd import ip_batch, run

Route = tuple[str, str]  # (destination address, via)


async def current(netns: str) -> dict[str, str]:
    _, out = await run("ip", "-n", netns, "-4", "-j", "route", "show", "proto", "static")
    have: dict[str, str] = {}
    for r in json.loads(out or "[]"):
        dst, via = str(r.get("dst", "")), str(r.get("gateway", ""))
        if dst and via:
            have[dst.removesuffix("/32")] = via
    return have


def changes(have: dict[str, str], want: tuple[Route, ...]) -> list[str]:
    """The `ip -batch` lines from `have` to `want` (pure; the addresses are validated)."""
    wanted = dict(want)
    lines = [f"route del {dst}/32 proto static" for dst in sorted(have) if dst not in wanted]
    lines += [f"route replace {dst}/32 via {via} proto static"
              for dst, via in sorted(wanted.items()) if have.get(dst) != via]
    return lines


async def converge(netns: str, want: tuple[Route, ...]) -> tuple[int, list[str]]:
    """Make the routes match: every line is tried (one route the kernel refuses, e.g. via
    an address off the underlay, does not hold back the others). Returns how many lines it
    ran, and one message per wanted route that is not in place."""
    lines = changes(await current(netns), want)
    await ip_batch(netns, lines, check=False)
    have = await current(netns) if lines else dict(want)
    return len(lines), [f"no route to {dst} via {via}" for dst, via in want
                        if have.get(dst) != via]
