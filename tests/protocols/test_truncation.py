"""Truncation: 10^7 random trials with 3 parties over the whole documented range.

Every result y must lie within 3/2 of x / 2^m (stochastic rounding of (x - D) / 2^m,
|D| <= 2^(m-1), where the opening leaves out k > 0 low bits), be floor(x / 2^m) or + 1 where
k = 0, and be unbiased up to 2^-(m+1). Inputs come from the CSPRNG, never a fixed mask.
"""
import numpy as np
import pytest
import torch

from mpcft.kernels import PRG, fresh_seed
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.truncation import dropped_bits, input_bound, truncate_cost
from mpcft.runtime import run_threads

from . import programs



def edges(bits: int) -> list:
    limit = input_bound(bits)            # |x| < 2^62 - 2^(bits - 1)
    return [0, 1, -1, limit - 1, -limit + 1, limit - 2**20, -limit + 2**20, 2**20, -2**20, 2**20 - 1]


def uniform_inputs(count: int, bits: int) -> torch.Tensor:
    limit = input_bound(bits)
    return PRG(fresh_seed()).below(2 * limit - 1, count) - (limit - 1)          # |x| < limit


def floor_div(x: torch.Tensor, bits: int) -> torch.Tensor:
    return x >> bits  # arithmetic shift = floor division for int64


def within_three_halves(y: torch.Tensor, x: torch.Tensor, bits: int) -> bool:
    """|y - x / 2^bits| < 3/2, in exact integers: |y 2^bits - x| < 3 2^(bits - 1)."""
    return bool(((y << bits) - x).abs().max() < 3 * 2 ** (bits - 1))


@pytest.mark.timeout(600)
def test_ten_million_truncations_three_parties_within_three_halves_and_unbiased():
    bits, total, chunk = 20, 10_000_000, 2_500_000
    assert dropped_bits(3, bits) == 18
    worst, ups, expected_ups = 0, 0, 0.0
    for start in range(0, total, chunk):
        x = uniform_inputs(chunk, bits)
        if start == 0:
            x[:len(edges(bits))] = torch.tensor(edges(bits))
        y = run_threads(programs.truncation_trials, 3, x, bits, dealer_handler=CorrelationDealer,
                        timeout=300)[0]
        assert within_three_halves(y, x, bits), "a truncation was off by 3/2 or more"
        diff = y - floor_div(x, bits)
        worst = max(worst, int(diff.abs().max()))
        ups += int(diff.sum())
        expected_ups += ((x & ((1 << bits) - 1)).double() / 2**bits).sum().item()
    assert worst <= 2
    # unbiased: the sum of y - floor(x / 2^m) matches the sum of fractional parts (less
    # below 2^-(m+1) per value, 5 here), within 6 standard deviations (each below 1/2)
    assert abs(ups - expected_ups) < 6 * np.sqrt(total / 4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("bits", [1, 2, 20, 40])
def test_truncation_any_party_count_and_shift(n, bits):
    x = uniform_inputs(50_000, bits)
    x[:len(edges(bits))] = torch.tensor(edges(bits))
    for y in run_threads(programs.truncation_trials, n, x, bits, dealer_handler=CorrelationDealer):
        diff = y - floor_div(x, bits)
        if dropped_bits(n, bits):
            assert within_three_halves(y, x, bits)
        else:                                           # the opening is whole: y = floor or + 1
            assert diff.min() >= 0 and diff.max() <= 1


@pytest.mark.parametrize("n,bits,k", [(2, 20, 18), (3, 20, 18), (4, 20, 17), (2, 2, 0), (2, 3, 1), (3, 2, 0),
                                      (5, 40, 37), (17, 20, 15), (2, 61, 59)])
def test_openings_leave_out_the_bits_below_the_shift(n, bits, k):
    assert dropped_bits(n, bits) == k                                  # the largest k that fits
    assert k == 0 or (n + 1) * 2 ** k <= 2 ** bits < (n + 1) * 2 ** (k + 1)
    assert truncate_cost(n, 1000, bits).bytes_sent == 8 * -(-1000 * (64 - k) // 64) * (n - 1)     # packed bits
