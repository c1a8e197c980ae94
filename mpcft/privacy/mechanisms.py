"""Laplace and Gaussian mechanisms on the fixed-point grid, with exact integer noise.

Laplace: noise P(k) ~ exp(-eps |k| / D) is eps-DP for L1 sensitivity D. Gaussian: noise P(k) ~
exp(-k^2 / (2 sigma^2)) with sigma from Balle & Wang 2018 (or the classical D sqrt(2 ln(1.25/delta))
/ eps) is (eps, delta)-DP for L2 sensitivity D. Values are first rounded down onto the grid of
step `resolution`, and the noise is calibrated to the rounded values' sensitivity on that grid.
Security: the noise is drawn from the AES-CTR PRG in integer arithmetic with exactly the stated
distribution (mpcft.kernels.discrete_noise), so Mironov 2012's floating-point attack does not apply.
On shares (SharedTensor in, SharedTensor out, nothing opened), the grid is the tensor's fixed
point and the noise comes from protocols.noise: no party knows it (see there for the sources).
"""
import math
import numbers
from fractions import Fraction

import numpy as np
import torch
from scipy.special import log_ndtr, ndtr

from mpcft.kernels import PRG, fresh_seed
from mpcft.kernels.discrete_noise import discrete_gaussian, discrete_laplace
from mpcft.protocols import noise
from mpcft.tensor import SharedTensor

from .accountant import check_privacy_parameters

RESOLUTION = 2.0 ** -20  # the project's fixed point: 20 fractional bits


def _check_positive(name, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _check_resolution(resolution) -> None:
    _check_positive("resolution", resolution)
    if math.frexp(resolution)[0] != 0.5:
        raise ValueError("resolution must be a power of two such as 2**-20, so that values are "
                         f"scaled onto its grid exactly, got {resolution}")


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"size must be a whole number >= 1, got {size}")


def _float_up(value: Fraction) -> float:
    """The least float >= value."""
    nearest = float(value)
    return nearest if Fraction(nearest) >= value else math.nextafter(nearest, math.inf)


# ---------------------------------------------------------------- calibration

def laplace_scale(epsilon, sensitivity) -> float:
    """b = D / eps: Laplace noise of scale b is eps-DP for L1 sensitivity D."""
    _check_positive("epsilon", epsilon)
    _check_positive("sensitivity", sensitivity)
    return sensitivity / epsilon


def gaussian_sigma(epsilon, delta, sensitivity) -> float:
    """Classical sigma = D sqrt(2 ln(1.25/delta)) / eps (Dwork & Roth 2014, Thm. A.1); eps < 1."""
    _check_positive("epsilon", epsilon)
    check_privacy_parameters(delta=delta)
    _check_positive("sensitivity", sensitivity)
    if epsilon >= 1:
        raise ValueError(f"the classical Gaussian calibration holds for epsilon < 1 only, got "
                         f"{epsilon}; use analytic_gaussian_sigma, which holds for any epsilon")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def _gaussian_delta(sigma, epsilon, sensitivity) -> float:
    """The exact delta at eps of Gaussian noise sigma (Balle & Wang 2018, Thm. 8):
    Phi(D/(2 sigma) - eps sigma/D) - e^eps Phi(-D/(2 sigma) - eps sigma/D)."""
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return float(ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b)))


def analytic_gaussian_sigma(epsilon, delta, sensitivity) -> float:
    """The smallest sigma (to relative 1e-12) for which Gaussian noise is (eps, delta)-DP for L2
    sensitivity D, any eps > 0: Balle & Wang 2018's exact condition, solved by bisection."""
    _check_positive("epsilon", epsilon)
    check_privacy_parameters(delta=delta)
    _check_positive("sensitivity", sensitivity)

    def private(ratio):  # ratio = sigma / D; delta(sigma) decreases in sigma
        return _gaussian_delta(ratio, epsilon, 1.0) <= delta

    low = high = 1.0
    while not private(high):
        low, high = high, 2 * high
    while private(low):
        low /= 2
    while high - low > 1e-12 * high:
        middle = (low + high) / 2
        if private(middle):
            high = middle
        else:
            low = middle
    return sensitivity * high


def grid_laplace_scale(sensitivity, epsilon, size, resolution=RESOLUTION) -> float:
    """The discrete Laplace scale t, in grid units, for `size` values of L1 sensitivity D.

    floor(x / r) moves each coordinate by less than one grid unit more than x does, so the
    rounded values have integer L1 sensitivity at most ceil(D/r) + size - 1; t is that over eps.
    """
    _check_positive("sensitivity", sensitivity)
    _check_positive("epsilon", epsilon)
    _check_size(size)
    _check_resolution(resolution)
    grid_sensitivity = math.ceil(sensitivity / resolution) + size - 1
    return _float_up(Fraction(grid_sensitivity) / Fraction(epsilon))


def grid_gaussian_sigma(sensitivity, epsilon, delta, size, *, analytic=True,
                        resolution=RESOLUTION) -> float:
    """The discrete Gaussian sigma, in grid units, for `size` values of L2 sensitivity D.

    floor(x / r) changes the difference of two inputs by a vector of norm below sqrt(size), so
    the rounded values have L2 sensitivity below D/r + sqrt(size); sigma is calibrated to that.
    """
    _check_positive("sensitivity", sensitivity)
    _check_size(size)
    _check_resolution(resolution)
    calibrate = analytic_gaussian_sigma if analytic else gaussian_sigma
    return calibrate(epsilon, delta, sensitivity / resolution + math.sqrt(size))


# ---------------------------------------------------------------- mechanisms

def _onto_grid(values, resolution):
    """floor(values / resolution) as int64, and the map from grid integers back to values' kind."""
    _check_resolution(resolution)
    if isinstance(values, torch.Tensor):
        array = values.detach().to("cpu", torch.float64).numpy()

        def restore(grid):
            return torch.from_numpy(grid * resolution).to(values.device)
    elif isinstance(values, np.ndarray):
        array = values.astype(np.float64)

        def restore(grid):
            return grid * resolution
    elif isinstance(values, numbers.Real) and not isinstance(values, bool):
        array = np.array(float(values))

        def restore(grid):
            return float(grid * resolution)
    else:
        raise TypeError(f"values must be a torch tensor, numpy array or float, got "
                        f"{type(values).__name__}")
    scaled = array / resolution
    if not np.all(np.abs(scaled) <= 2.0 ** 52):  # also refuses nan and inf
        raise ValueError(f"values must be finite and at most 2^52 grid steps "
                         f"({2.0 ** 52 * resolution:g}) in magnitude, so that they and their "
                         "noisy versions lie on the grid exactly")
    return np.floor(scaled).astype(np.int64), restore


def _shared_grid(values: SharedTensor) -> float:
    if values.frac_bits < 1:
        raise ValueError("a mechanism on shares needs a fixed-point SharedTensor (frac_bits >= 1)")
    return 2.0 ** -values.frac_bits


def laplace_mechanism(values, sensitivity, epsilon, *, resolution=RESOLUTION, prg=None, source="dealer"):
    """values rounded down onto the grid plus discrete Laplace noise: eps-DP for L1 sensitivity
    `sensitivity` of `values` (scale from grid_laplace_scale). Same kind as `values`, float64.
    A SharedTensor gets noise shares from `source` on its own grid (prg, resolution unused)."""
    if isinstance(values, SharedTensor):
        scale = grid_laplace_scale(sensitivity, epsilon, max(values.numel(), 1), _shared_grid(values))
        return values + SharedTensor(values.ctx, noise.laplace_noise(values.ctx, values.shape, scale, source),
                                     values.frac_bits)
    grid, restore = _onto_grid(values, resolution)
    scale = grid_laplace_scale(sensitivity, epsilon, max(grid.size, 1), resolution)
    prg = PRG(fresh_seed()) if prg is None else prg
    return restore(grid + discrete_laplace(prg, scale, grid.shape))


def gaussian_mechanism(values, sensitivity, epsilon, delta, *, analytic=True,
                       resolution=RESOLUTION, prg=None, source="dealer", colluders=None):
    """values rounded down onto the grid plus discrete Gaussian noise: (eps, delta)-DP for L2
    sensitivity `sensitivity` of `values`. Same kind as `values`, float64.

    sigma (grid_gaussian_sigma) is the continuous Gaussian's; the discrete Gaussian's (eps, delta)
    on integer-valued queries matches it up to a factor negligible for sigma >= 1 grid unit,
    per Canonne, Kamath & Steinke 2020. A SharedTensor gets noise shares from `source` (and
    `colluders`, protocols.noise.gaussian_noise) on its own grid.
    """
    if isinstance(values, SharedTensor):
        sigma = grid_gaussian_sigma(sensitivity, epsilon, delta, max(values.numel(), 1), analytic=analytic,
                                    resolution=_shared_grid(values))
        shares = noise.gaussian_noise(values.ctx, values.shape, sigma * sigma, source, colluders)
        return values + SharedTensor(values.ctx, shares, values.frac_bits)
    grid, restore = _onto_grid(values, resolution)
    sigma = grid_gaussian_sigma(sensitivity, epsilon, delta, max(grid.size, 1),
                                analytic=analytic, resolution=resolution)
    prg = PRG(fresh_seed()) if prg is None else prg
    try:
        draws = discrete_gaussian(prg, sigma * sigma, grid.shape)
    except ValueError as error:
        raise ValueError(f"the noise sigma {sigma * resolution:g} is {sigma:.3g} grid steps, "
                         "beyond the exact sampler's range (about 1.9e8): use a coarser "
                         "resolution") from error
    return restore(grid + draws)
