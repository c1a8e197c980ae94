"""Poisson sampling for DP-SGD from a seed no party chose alone.

Each step takes every training example independently with probability q (Opacus's default,
the sampling its accountants assume): the batch size varies and is public among the parties.
The draws come from PRG(seed) with seed = joint_seed(ctx), the opened sum of a fresh random
share from every party (a coin toss, fair while one party is honest). The parties learn the
schedule; whoever receives only the model does not, which is what amplification by sampling
needs (mpcft.privacy docstring: the threat model).
"""
import math

import numpy as np

from mpcft.kernels import PRG, fresh_seed
from mpcft.protocols.sharing import open_

SEED_WORDS = 4      # 256 bits
_Q_BITS = 62


def joint_seed(ctx) -> bytes:
    """32 bytes that are uniform if any one party is honest, the same at every party.
    Reveals the seed to the parties (it is theirs). Cost: open_cost(n, 4)."""
    mine = PRG(fresh_seed()).ring((SEED_WORDS,)).to(ctx.device)
    return open_(ctx, mine).cpu().contiguous().numpy().tobytes()


def poisson_plan(total: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate q, steps) as Opacus's DPDataLoader: q = 1 / ceil(total / batch_size) and
    that many steps per epoch, so the expected batch size q * total is about batch_size."""
    if total <= 0 or batch_size <= 0 or epochs <= 0:
        raise ValueError(f"Poisson sampling needs examples, a batch size and epochs, got "
                         f"{total}, {batch_size}, {epochs}")
    per_epoch = math.ceil(total / batch_size)
    return 1.0 / per_epoch, per_epoch * epochs


def poisson_schedule(counts: list[int], sample_rate: float, steps: int, seed: bytes) -> list[list]:
    """Per step, the (owner, index) pairs taken, each with probability sample_rate (rounded to
    a multiple of 2^-62) from PRG(seed): the same schedule at every party holding the seed."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    items = np.array([(owner, i) for owner, count in enumerate(counts) for i in range(count)],
                     dtype=np.int64).reshape(-1, 2)
    threshold = round(sample_rate * 2 ** _Q_BITS)
    prg = PRG(seed)
    schedule = []
    for _ in range(steps):
        words = prg.ring_numpy(len(items)) & ((1 << _Q_BITS) - 1)
        taken = items[words < threshold]
        schedule.append([(int(owner), int(i)) for owner, i in taken])
    return schedule


def most_inclusions(schedule: list[list]) -> int:
    """How many steps the most often sampled example is in (0 for an empty schedule)."""
    seen: dict = {}
    for batch in schedule:
        for item in batch:
            seen[item] = seen.get(item, 0) + 1
    return max(seen.values(), default=0)

