"""Bandwidth caps with tc, per tap, both directions (pure command rendering + apply).

- Traffic INTO the VM leaves the host through the tap: a `tbf` qdisc on the tap's root.
- Traffic FROM the VM enters the host on the tap: the ingress qdisc redirects it (u32 match-all
  + mirred) to an IFB device (`names.ifb_name`) whose root is the same `tbf`.
(This kernel has no police action nor matchall classifier; u32 + mirred + ifb is universal.)
"""

from __future__ import annotations

from cumulo.agent.net import names
from cumulo.agent.net.cmd import ip_batch, tc_batch

MIN_BURST = 16 * 1024
LATENCY = "50ms"


def burst_bytes(mbps: int) -> int:
    """Bucket size: 10 ms worth of traffic, at least 16 KiB (more than rate/HZ + one MTU)."""
    return max(MIN_BURST, mbps * 1_000_000 // 8 // 100)


def _tbf(dev: str, mbps: int) -> str:
    return (
        f"qdisc replace dev {dev} root handle 1: tbf rate {mbps}mbit "
        f"burst {burst_bytes(mbps)} latency {LATENCY}"
    )


def cleanup_lines(tap: str) -> list[str]:
    """tc lines removing any shaping from a tap (run with -force: absent is fine)."""
    return [f"qdisc del dev {tap} root", f"qdisc del dev {tap} ingress"]


def shape_lines(tap: str, mbps: int) -> list[str]:
    """tc lines (after cleanup_lines) that cap both directions of a tap at `mbps` Mbit/s."""
    if mbps <= 0:
        return []
    ifb = names.ifb_name(tap)
    return [
        _tbf(tap, mbps),
        f"qdisc add dev {tap} handle ffff: ingress",
        f"filter add dev {tap} parent ffff: protocol all prio 1 u32 match u32 0 0 "
        f"action mirred egress redirect dev {ifb}",
        _tbf(ifb, mbps),
    ]


async def apply(netns: str, caps: dict[str, int], existing_ifbs: set[str]) -> None:
    """Shape every tap in `caps` (tap -> Mbit/s, 0 = uncapped); delete IFBs no longer used."""
    wanted_ifbs = {names.ifb_name(t) for t, m in caps.items() if m > 0}
    await ip_batch(
        netns,
        [f"link add {i} type ifb" for i in sorted(wanted_ifbs - existing_ifbs)]
        + [f"link set {i} up" for i in sorted(wanted_ifbs)],
    )
    await tc_batch(netns, [line for tap in sorted(caps) for line in cleanup_lines(tap)], False)
    await tc_batch(netns, [line for tap in sorted(caps) for line in shape_lines(tap, caps[tap])])
    await ip_batch(netns, [f"link del {i}" for i in sorted(existing_ifbs - wanted_ifbs)], False)
