"""Calibration numbers, the noise's distribution, the grid, determinism, refusals and speed."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mpcft.kernels import PRG
from mpcft.privacy.mechanisms import (RESOLUTION, analytic_gaussian_sigma, gaussian_mechanism,
                                      gaussian_sigma, grid_gaussian_sigma, grid_laplace_scale,
                                      laplace_mechanism, laplace_scale)

N = 10 ** 6
SEED = bytes(range(32))


def balle_wang_delta(sigma, epsilon, sensitivity=1.0):
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b)


def bisect_sigma(epsilon, delta):
    low, high = 1e-3, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (low, middle) if balle_wang_delta(middle, epsilon) <= delta else (middle, high)
    return high


def test_classical_sigma():
    assert gaussian_sigma(0.5, 1e-5, 1.0) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5,
                                                           rel=1e-12)
    assert gaussian_sigma(0.5, 1e-5, 3.0) == pytest.approx(3 * gaussian_sigma(0.5, 1e-5, 1.0))
    assert laplace_scale(0.5, 2.0) == 4.0


def test_analytic_sigma_is_the_smallest_private_one():
    sigma = analytic_gaussian_sigma(0.5, 1e-5, 1.0)
    assert sigma < gaussian_sigma(0.5, 1e-5, 1.0)
    assert abs(balle_wang_delta(sigma, 0.5) - 1e-5) <= 1e-9
    assert balle_wang_delta(sigma, 0.5) <= 1e-5
    assert balle_wang_delta(0.999 * sigma, 0.5) > 1e-5


def test_analytic_sigma_known_value():
    sigma = analytic_gaussian_sigma(1.0, 1e-5, 1.0)
    print(f"analytic sigma(eps=1, delta=1e-5) = {sigma:.9f}, "
          f"test's bisection {bisect_sigma(1.0, 1e-5):.9f}")
    assert 3.6 <= sigma <= 3.9
    assert abs(sigma - bisect_sigma(1.0, 1e-5)) <= 0.01
    assert analytic_gaussian_sigma(1.0, 1e-5, 2.5) == pytest.approx(2.5 * sigma, rel=1e-11)
    assert analytic_gaussian_sigma(20.0, 1e-5, 1.0) < 0.5  # any epsilon > 0


def test_grid_calibration_covers_the_rounding():
    assert grid_laplace_scale(1.0, 0.5, 1) == 2 * 2 ** 20
    assert grid_laplace_scale(1.0, 0.5, 10) == 2 * (2 ** 20 + 9)
    assert grid_gaussian_sigma(1.0, 1.0, 1e-5, 100) == pytest.approx(
        analytic_gaussian_sigma(1.0, 1e-5, 2 ** 20 + 10))
    generator = np.random.default_rng(0)  # test inputs only, not noise
    x = generator.normal(size=(1000, 8)) * 3.0
    y = x + generator.normal(size=x.shape) * 1e-6
    l1, l2 = np.abs(x - y).sum(axis=1), np.linalg.norm(x - y, axis=1)
    rounded = np.floor(x / RESOLUTION) - np.floor(y / RESOLUTION)
    assert np.all(np.abs(rounded).sum(axis=1) <= np.ceil(l1 / RESOLUTION) + 8 - 1)
    assert np.all(np.linalg.norm(rounded, axis=1) < l2 / RESOLUTION + math.sqrt(8))


def test_laplace_distribution():
    noisy = laplace_mechanism(np.zeros(N), 1.0, 1.0, prg=PRG(SEED))
    t = grid_laplace_scale(1.0, 1.0, N)
    variance = 2 * math.exp(-1 / t) / (1 - math.exp(-1 / t)) ** 2 * RESOLUTION ** 2
    print(f"laplace: t = {t:.1f} grid steps, variance {noisy.var():.4f} vs {variance:.4f}")
    assert abs(noisy.mean()) <= 5 * math.sqrt(variance / N)
    assert abs(noisy.var() / variance - 1) <= 0.01


def test_gaussian_distribution():
    noisy = gaussian_mechanism(np.zeros(N), 1.0, 1.0, 1e-5, prg=PRG(SEED))
    variance = (grid_gaussian_sigma(1.0, 1.0, 1e-5, N) * RESOLUTION) ** 2
    print(f"gaussian: variance {noisy.var():.4f} vs {variance:.4f}")
    assert abs(noisy.mean()) <= 5 * math.sqrt(variance / N)
    assert abs(noisy.var() / variance - 1) <= 0.01


@pytest.mark.parametrize("mechanism, resolution", [
    (lambda values, prg, r: laplace_mechanism(values, 1.0, 1.0, resolution=r, prg=prg), RESOLUTION),
    (lambda values, prg, r: gaussian_mechanism(values, 1.0, 1.0, 1e-5, resolution=r, prg=prg),
     RESOLUTION),
    (lambda values, prg, r: gaussian_mechanism(values, 1.0, 0.5, 1e-5, analytic=False,
                                               resolution=r, prg=prg), 2 ** -16),
])
def test_kinds_grid_and_determinism(mechanism, resolution):
    values = np.linspace(-3.0, 3.0, 1001)
    array = mechanism(values, PRG(SEED), resolution)
    assert isinstance(array, np.ndarray) and array.dtype == np.float64 and array.shape == (1001,)
    assert np.array_equal(array, mechanism(values, PRG(SEED), resolution))
    assert not np.array_equal(array, mechanism(values, PRG(bytes(32)), resolution))
    tensor = mechanism(torch.from_numpy(values).float(), PRG(SEED), resolution)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64
    scalar = mechanism(0.25, PRG(SEED), resolution)
    assert isinstance(scalar, float)
    for output in (array, tensor.numpy(), np.array(scalar)):
        assert np.array_equal(output / resolution, np.round(output / resolution))


@pytest.mark.parametrize("call", [
    lambda: laplace_mechanism(1.0, 1.0, 0.0),
    lambda: laplace_mechanism(1.0, 1.0, -1.0),
    lambda: laplace_mechanism(1.0, 0.0, 1.0),
    lambda: laplace_mechanism(1.0, -1.0, 1.0),
    lambda: laplace_mechanism(1.0, 1.0, 1.0, resolution=0.0),
    lambda: laplace_mechanism(1.0, 1.0, 1.0, resolution=-2 ** -20),
    lambda: laplace_mechanism(1.0, 1.0, 1.0, resolution=1e-3),
    lambda: laplace_mechanism(np.array([1.0, math.nan]), 1.0, 1.0),
    lambda: gaussian_mechanism(1.0, 1.0, 0.0, 1e-5),
    lambda: gaussian_mechanism(1.0, 1.0, 1.0, 0.0),
    lambda: gaussian_mechanism(1.0, 1.0, 1.0, 1.0),
    lambda: gaussian_mechanism(1.0, 0.0, 1.0, 1e-5),
    lambda: gaussian_mechanism(1.0, 1.0, 1.0, 1e-5, resolution=0.0),
    lambda: gaussian_mechanism(1.0, 1.0, 1.0, 1e-5, analytic=False),  # classical needs eps < 1
    lambda: gaussian_mechanism(1.0, 1e3, 1e-3, 1e-5),  # sigma beyond the sampler's range
    lambda: gaussian_sigma(math.inf, 1e-5, 1.0),
    lambda: analytic_gaussian_sigma(1.0, 1e-5, -1.0),
    lambda: laplace_scale(1.0, math.nan),
])
def test_bad_parameters_raise(call):
    with pytest.raises(ValueError):
        call()
