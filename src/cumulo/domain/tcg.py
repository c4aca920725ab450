"""TCG's translation-block cache: the `-accel tcg,tb-size=N` of every emulated VM.

QEMU 7.2 gives each TCG guest a 1 GiB translation cache by default (mapped lazily; a booted
tiny guest has ~70 MiB of it resident and it keeps growing with the code the guest runs): on a
64 MiB guest that is more memory than the guest. A smaller cache is flushed and retranslated
more often, so its size is a trade of memory against speed, measured side by side by the
`tcg_memory` benchmark (docs/benchmarks.md, Findings 2026-12-06): 32 MiB saved ~47 MiB per VM
but no smaller cache booted within 5 % of QEMU's own, and on a 2-core machine CPU, not memory,
bounds how many VMs run, so the default stays QEMU's.
"""

from __future__ import annotations

# MiB; 0 = QEMU's own default (1 GiB on a 64-bit host).
DEFAULT_TB_SIZE_MIB = 0
MAX_TB_SIZE_MIB = 4096


def check_tb_size(mib: int) -> int:
    """A valid tb-size (MiB) or ValueError with a one-line reason."""
    if isinstance(mib, bool) or not isinstance(mib, int) or not 0 <= mib <= MAX_TB_SIZE_MIB:
        raise ValueError(f"tcg tb-size must be an integer from 0 (QEMU's default) to "
                         f"{MAX_TB_SIZE_MIB} MiB, not {mib!r}")
    return mib


def accel_option(accel: str, tb_size_mib: int) -> str:
    """QEMU's `-accel` value: `tcg,tb-size=N` for TCG with a set size; else the name."""
    if accel == "tcg" and check_tb_size(tb_size_mib):
        return f"tcg,tb-size={tb_size_mib}"
    return accel
