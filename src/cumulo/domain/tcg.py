"""TCG's translation-block cache: the `-accel tcg,tb-size=N` of every emulated VM.

QEMU 7.2 gives each TCG guest a 1 GiB translation cache by default (mapped lazily; a booted
tiny guest has ~70 MiB of it resident and it keeps growing with the code the guest runs): on a
64 MiB guest that is more memory than the guest. A smaller cache is flushed and retranslated
more often, so its size is a trade of memory against speed, measured side by side by the
`tcg_memory` benchmark. On the quiet full run of 2026-12-07 (docs/benchmarks.md, five boots
per size, interleaved) 32 MiB cost 109 MiB beyond the guest's RAM against QEMU's 156, and
booted at 0.93 x QEMU's time; 16 MiB booted 1.5 x slower and 8 MiB 3.2 x (the guest's boot
code no longer fits and is translated again and again). 32 is the smallest size within the
benchmark's 5 % of QEMU's boot time, so it is the default.
"""

from __future__ import annotations

# MiB; 0 = QEMU's own default (1 GiB on a 64-bit host).
DEFAULT_TB_SIZE_MIB = 32
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
