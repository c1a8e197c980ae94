"""fixed.powers (factors truncated level by level, their products local) against float64."""
import pytest
import torch

from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.fixed import power_levels, powers_cost
from mpcft.runtime import run_threads

from . import programs


def test_schedule_truncates_every_factor_once():
    levels = power_levels(8)
    assert levels == [([1], [(1, 1)]), ([2], [(2, 1), (2, 2)]), ([3, 4], [(4, 1), (4, 2), (4, 3), (4, 4)])]
    for degree in range(1, 20):
        made = {1} | {i + j for _, pairs in power_levels(degree) for i, j in pairs}
        assert made == set(range(1, degree + 1))
        opened = [f for new, _ in power_levels(degree) for f in new]
        assert len(opened) == len(set(opened))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("degree", [1, 2, 3, 5, 8, 11])
def test_powers_match_float64(n, degree):
    gen = torch.Generator().manual_seed(degree)
    x = torch.rand(300, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    got, cost = run_threads(programs.powers_program, n, x, degree, dealer_handler=CorrelationDealer)[0]
    assert len(got) == degree
    for k, value in enumerate(got, start=1):
        # each level's truncation adds < 2^-20 relative to the size of the factors
        assert (value - x ** k).abs().max() < 2e-5 * k, k
    declared = powers_cost(n, x.numel(), degree, 20)     # x at 2f bits, truncated by f = 20
    assert cost == (declared.rounds, declared.bytes_sent)
