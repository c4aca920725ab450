"""The chaos suite's seed: printed, and replayed with `CUMULO_CHAOS_SEED=N`."""

from __future__ import annotations

import os
import random

import pytest

SEED = int(os.environ.get("CUMULO_CHAOS_SEED") or random.SystemRandom().randrange(2**31))


@pytest.fixture
def seed() -> int:
    print(f"\nchaos seed {SEED}: replay with CUMULO_CHAOS_SEED={SEED}")
    return SEED
