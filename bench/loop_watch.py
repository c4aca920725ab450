"""What blocks an event loop: a diagnostic for the control-plane benchmark.

`CUMULO_BENCH_LOOP_WATCH=DIR` makes the API process (bench.cp_processes) and the bench's own
load generator (bench.open_loop) each write DIR/<role>-<pid>.jsonl: one line per stall, a
moment when the loop did not run its callbacks for more than STALL_S, with
- `at` / `s`: when it began (time.monotonic, the same clock in every process of the machine,
  so the stalls of the API and of the client line up with each other and with the requests)
  and how long it lasted;
- `watched_cpu_s` of `watched_s` (from when the stall was seen, STALL_S in, to its end): the
  CPU time the loop's thread used meanwhile: close to `watched_s` when the loop ran something
  long, far below when the thread waited (a lock, I/O) or was not scheduled;
- `gc_s`: the part spent in the cyclic garbage collector (gc.callbacks), by generation;
- `stacks`: the loop thread's stack, sampled every SAMPLE_S during the stall, as counts of
  the innermost frames (a sampler thread takes the GIL between the loop's switch intervals,
  so a stall the interpreter holds on to, such as the collector, shows the frame after it).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ENV = "CUMULO_BENCH_LOOP_WATCH"
TICK_S = 0.005  # how often the loop proves it runs
STALL_S = 0.03  # a gap between ticks longer than this is a stall
SAMPLE_S = 0.002
FRAMES = 6  # innermost frames kept per sample


class LoopWatch:
    def __init__(self, out: Path) -> None:
        self._out = out
        self._last = time.monotonic()
        self._gc: list[tuple[float, float, int]] = []  # (start, end, generation)
        self._gc_start = 0.0
        self._stop = threading.Event()
        self._ident = threading.get_ident()
        self._clock = time.pthread_getcpuclockid(self._ident)

    async def ticks(self) -> None:
        try:
            while True:
                self._last = time.monotonic()
                await asyncio.sleep(TICK_S)
        finally:  # cancelled: the watching thread ends too
            self._stop.set()
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self._gc.append((self._gc_start, time.monotonic(), int(info["generation"])))

    def start(self) -> asyncio.Task[None]:
        gc.callbacks.append(self._on_gc)
        threading.Thread(target=self._watch, daemon=True, name="loop-watch").start()
        return asyncio.get_running_loop().create_task(self.ticks())

    def _watch(self) -> None:
        with open(self._out, "a") as f:
            while not self._stop.is_set():
                time.sleep(SAMPLE_S)
                began = self._last
                if time.monotonic() - began < STALL_S:
                    continue
                cpu0, seen = time.clock_gettime(self._clock), time.monotonic()
                stacks: Counter[str] = Counter()
                while self._last == began and not self._stop.is_set():
                    frame = sys._current_frames().get(self._ident)
                    if frame is not None:
                        stacks[_summary(traceback.extract_stack(frame))] += 1
                    time.sleep(SAMPLE_S)
                end = self._last
                gcs = [g for g in self._gc if g[1] >= began and g[0] <= end]
                self._gc = [g for g in self._gc if g[1] >= end]
                f.write(json.dumps({
                    "at": round(began, 4), "s": round(end - began - TICK_S, 4),
                    "watched_s": round(end - seen, 4),
                    "watched_cpu_s": round(time.clock_gettime(self._clock) - cpu0, 4),
                    "gc_s": [(round(e - s, 4), g) for s, e, g in gcs],
                    "stacks": stacks.most_common(8)}) + "\n")
                f.flush()


def _summary(stack: traceback.StackSummary) -> str:
    """The innermost frame, then the innermost FRAMES of cumulo's own (where the work is
    asked for, rather than the library frames that do it), innermost first."""
    own = [fs for fs in stack[:-1] if "/cumulo/" in fs.filename][-FRAMES:]
    return " < ".join(f"{Path(fs.filename).name}:{fs.name}:{fs.lineno}"
                      for fs in reversed([*own, stack[-1]]))


def start(role: str) -> asyncio.Task[None] | None:
    """Watch the running loop if CUMULO_BENCH_LOOP_WATCH names a directory."""
    where = os.environ.get(ENV)
    if not where:
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    return LoopWatch(Path(where) / f"{role}-{os.getpid()}.jsonl").start()
