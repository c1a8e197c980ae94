"""Laplace and Gaussian mechanisms on shares: the revealed noise has the calibrated variance on
the tensor's grid, with dealer and party noise, 2 and 3 parties; the values are kept."""
import math

import pytest
import torch

from mpcft.privacy import mechanisms
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads
from mpcft.tensor import SharedTensor

COORDS = 100_000


def noisy(session, kind, source):
    ctx = MPCContext(session)
    values = torch.linspace(-3, 3, COORDS, dtype=torch.float64)
    x = SharedTensor.from_plain(ctx, values if ctx.rank == 0 else None, 0, (COORDS,))
    if kind == "laplace":
        out = mechanisms.laplace_mechanism(x, 1e-3, 2.0, source=source)
    else:
        out = mechanisms.gaussian_mechanism(x, 1e-3, 1.0, 1e-5, source=source)
    return out.reveal() - values


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", ["laplace", "gaussian"])
def test_mechanisms_on_shares_add_the_calibrated_noise(n, kind):
    grid = 2.0 ** -20
    z = run_threads(noisy, n, kind, "dealer", dealer_handler=CorrelationDealer)[0]
    if kind == "laplace":
        t = mechanisms.grid_laplace_scale(1e-3, 2.0, COORDS, grid)
        variance = 2 * math.exp(-1 / t) / (1 - math.exp(-1 / t)) ** 2 * grid ** 2
    else:
        variance = (mechanisms.grid_gaussian_sigma(1e-3, 1.0, 1e-5, COORDS, resolution=grid) * grid) ** 2
    print(f"{kind}, n={n}: variance {float(z.var()):.4g} vs {variance:.4g}")
    assert abs(float(z.var()) / variance - 1) < 0.03
    assert abs(float(z.mean())) < 5 * math.sqrt(variance / COORDS) + grid


@pytest.mark.timeout(120)
def test_party_noise_on_shares_is_n_times_for_laplace():
    z = run_threads(noisy, 3, "laplace", "parties", dealer_handler=CorrelationDealer)[0]
    t = mechanisms.grid_laplace_scale(1e-3, 2.0, COORDS, 2.0 ** -20)
    one = 2 * math.exp(-1 / t) / (1 - math.exp(-1 / t)) ** 2 * 2.0 ** -40
    assert abs(float(z.var()) / (3 * one) - 1) < 0.03
