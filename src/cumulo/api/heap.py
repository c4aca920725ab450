"""The API server's garbage collector settings, set once the process has started.

CPython's cyclic collector walks every tracked object in a full (oldest generation)
collection. Once FastAPI, pydantic and SQLAlchemy are loaded the API process holds about
110,000 of them, and a full collection of those alone takes ~55 ms on this machine. In the
control-plane benchmark the API made a full collection about every 2.5 s, each a 50-110 ms
stall of the event loop that found nothing to free: a good part of the create latency's p99.

- `gc.freeze()` after start-up moves what start-up made (modules, classes, compiled
  statements) out of the collector's sight for good: the stalls fell to 15-55 ms.
- A first generation of 50,000 allocations instead of 700 makes every generation's turn
  come about 70 times less often; what a request allocates is mostly freed by reference
  counting before it counts. Measured: a first-generation pass of 10-30 ms every few
  seconds, and no full collection during the 10 s of 2,000 creates. The price: work that
  leaves much garbage in reference cycles (2,000 deletes) gets single passes of 80-140 ms.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # CPython's default: 700
OLDER_THRESHOLDS = (20, 10)  # CPython's default: (10, 10)


def settle() -> None:
    """Call once, when start-up is done and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
