"""Truncation: 10^7 random trials with 3 parties over the whole documented range.

Every result must be floor(x / 2^m) or floor(x / 2^m) + 1 (stochastic rounding, unbiased);
none may be off by more. Inputs come from the CSPRNG, never a fixed mask.
"""
import numpy as np
import pytest
import torch

from mpcft.kernels import PRG, fresh_seed
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.truncation import VALID_BITS
from mpcft.runtime import run_threads

from . import programs

EDGES = [0, 1, -1, 2**62 - 1, -2**62, 2**62 - 2**20, -2**62 + 1, 2**20, -2**20, 2**20 - 1]


def floor_div(x: torch.Tensor, bits: int) -> torch.Tensor:
    return x >> bits  # arithmetic shift = floor division for int64


@pytest.mark.timeout(600)
def test_ten_million_truncations_three_parties_never_off_by_more_than_one():
    bits, total, chunk = 20, 10_000_000, 2_500_000
    prg = PRG(fresh_seed())
    worst, ups, expected_ups = 0, 0, 0.0
    for start in range(0, total, chunk):
        x = prg.below(1 << (VALID_BITS + 1), chunk) - (1 << VALID_BITS)  # uniform in [-2^62, 2^62)
        if start == 0:
            x[:len(EDGES)] = torch.tensor(EDGES)
        y = run_threads(programs.truncation_trials, 3, x, bits, dealer_handler=CorrelationDealer,
                        timeout=300)[0]
        diff = y - floor_div(x, bits)
        assert diff.min().item() >= 0 and diff.max().item() <= 1, "a truncation was off by more than 1"
        worst = max(worst, int(diff.abs().max()))
        ups += int(diff.sum())
        expected_ups += ((x & ((1 << bits) - 1)).double() / 2**bits).sum().item()
    assert worst <= 1
    # unbiased: the number of rounded-up results matches sum of fractional parts (binomial, 6 sigma)
    assert abs(ups - expected_ups) < 6 * np.sqrt(total / 4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("bits", [1, 20, 40])
def test_truncation_any_party_count_and_shift(n, bits):
    x = PRG(fresh_seed()).below(1 << (VALID_BITS + 1), 50_000) - (1 << VALID_BITS)
    x[:len(EDGES)] = torch.tensor(EDGES)
    for y in run_threads(programs.truncation_trials, n, x, bits, dealer_handler=CorrelationDealer):
        diff = y - floor_div(x, bits)
        assert diff.min() >= 0 and diff.max() <= 1
