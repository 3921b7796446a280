"""Seeds derived from integers: stable across processes, machines and runs (numpy SeedSequence)."""
from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers, e.g. (run seed, step, micro-batch) or (seed, sample index)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))
