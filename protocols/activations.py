"""GELU, tanh and sigmoid over the whole real line, with their derivatives.

Both are an exact piecewise-linear part plus a bounded correction that a polynomial
approximates for |x| < T = 4 and that a comparison switches off beyond:
  GELU(x) = ReLU(x) - [|x| < T] * g(|x|),   g(t) = t * Phi(-t)        (g(4) = 1.3e-4)
  tanh(x) = sgn(x) * (1 - 2 [|x| < T] r(|x|)), r(t) = 1 / (1 + e^(2t))  (r(4) = 3.4e-4)
g, g' and r are degree-8 least-squares fits in u = t / 4 on Chebyshev nodes of [-1/64, 1].
Steps: one coarse comparison of x (bits = 32: |x| < 4096; comparison.select_negative with
resolution_bits k, (n - 1) 2^k <= 2^f / 16) gives [x < 0] exactly but for x in [0, 1/16),
where it may be 1; with it ReLU(x) = x - x [x < 0] and |x| = x (1 - 2 [x < 0]). Taking a small
x >= 0 for negative is harmless: the identities hold on both branches (0 - g(-x) = x Phi(x),
-(1 - 2 r(-x)) = tanh(x), and likewise for the derivative), and the fits cover t >= -1/16;
the comparison is 16 + ceil(log2(n - 1)) bits wide instead of 32 (two parties: a round and
half the digits fewer). Then, side by side (protocols.parallel: the rounds of the longer), 3
rounds of truncations give the powers of u = |x| / 4 (fixed.powers: products of truncated
values are local), and a second coarse comparison, of |x| - (T - 1/4) at resolution
2^-2 / (n - 1) (14 bits for two parties), gives [|x| < T] (exact but for |x| in [T - 1/4, T),
where the fits still hold and dropping the correction errs by at most 3.3e-4 for GELU,
1.2e-3 for its derivative and 1.1e-3 for tanh) as a comparison.SignGate, whose bit
multiplies the combination of the powers locally as one truncation brings it back to f bits
(no Beaver product). tanh and
GELU's derivative take sgn(x) = 1 - 2 [x < 0] times a last value by one masked opening of it
against the first comparison's bit (comparison.Select.times: half a Beaver product's bytes).
Saturation is exact: beyond +-T the outputs are ReLU(x) and +-1 (up to 2^-f).
Reveals nothing but the output shares.
"""
from math import erf, sqrt

import numpy as np
import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS

from . import fixed
from .comparison import Select, SignGate, resolution_bits_within, select_times_cost, sign_cost
from .cost import Cost  # noqa: F401  (cost formulas below return Cost)
from .parallel import parallel, parallel_cost
from .truncation import truncations_cost

DEGREE = 8
T = 4.0
_U_SHIFT = 2            # u = |x| / 2^2 = |x| / T
_INSIDE_BAND = 2        # [|x| < T] exact but for |x| in [T - 2^-2, T)


_LOWEST_U = -1 / 64     # u = |x| / T of a small x >= 0 that the coarse sign took for negative


def _sign_resolution(n: int, frac_bits: int) -> int:
    """k for the coarse sign of x: (n - 1) 2^k <= 2^f / 16, i.e. u >= _LOWEST_U."""
    return resolution_bits_within(n, frac_bits - 4)


def _inside_resolution(n: int, frac_bits: int) -> int:
    """k for the coarse [|x| - (T - 1/4) < 0]: (n - 1) 2^k <= 2^(f - 2), a band of 1/4 below T."""
    return resolution_bits_within(n, frac_bits - _INSIDE_BAND)


def _fit(f, T: float) -> np.ndarray:
    """Least-squares coefficients of f(T u) in powers of u on 4000 Chebyshev nodes of [_LOWEST_U, 1]."""
    k = np.arange(4000)
    u = _LOWEST_U + (1 - _LOWEST_U) * (1 - np.cos(np.pi * (k + 0.5) / 4000)) / 2
    return np.linalg.lstsq(np.vander(u, DEGREE + 1, increasing=True), f(T * u), rcond=None)[0]


def _std_normal_cdf(z):
    return np.vectorize(lambda v: 0.5 * (1 + erf(v / sqrt(2))))(z)


GELU_COEFFS = _fit(lambda t: t * _std_normal_cdf(-t), T)
GELU_GRAD_COEFFS = _fit(lambda t: _std_normal_cdf(-t) - t * np.exp(-t * t / 2) / sqrt(2 * np.pi), T)
TANH_COEFFS = _fit(lambda t: 1 / (1 + np.exp(2 * t)), T)


def _pieces(ctx, x: torch.Tensor, bits: int, polynomials: list, later: int = 0):
    """ReLU(x), the comparison.Select of [x < 0] (with `later` products to come) and
    [|x| < T] * p(u) for each coefficient list p of `polynomials`, u = |x| / T: the powers of u
    (fixed.powers) beside a comparison (parallel), whose bit gates the combinations of the
    powers as they are truncated (comparison.SignGate)."""
    select = Select(ctx, x, bits, resolution_bits=_sign_resolution(ctx.world_size, ctx.frac_bits), later=later)
    neg_part = select.negative_part
    relu = x - neg_part
    absolute = relu - neg_part
    f, shift = ctx.frac_bits, fixed.combined_shift(ctx.frac_bits)
    (powers, _), inside = parallel(
        ctx, lambda c: fixed.powers(c, absolute, _U_SHIFT, DEGREE),
        lambda c: SignGate(c, absolute - c.public(T - 2.0 ** -_INSIDE_BAND, x.shape), bits,
                           [shift] * len(polynomials), resolution_bits=_inside_resolution(c.world_size, f)))
    combined = [fixed.combine_powers(ctx, powers, p[1:], p[0])[0] for p in polynomials]
    return relu, select, inside.truncate(combined)


def gelu(ctx, x: torch.Tensor, bits: int = 32, with_grad: bool = False):
    """GELU(x) = x Phi(x); with_grad also returns GELU'(x) (shares), reusing the powers.

    Max error about 3e-4 on the whole line. Cost: gelu_cost().
    """
    # d/dx g(|x|) = sgn(x) g'(|x|), g' fitted on its own in the same powers
    relu, select, gated = _pieces(ctx, x, bits, [GELU_COEFFS] + ([GELU_GRAD_COEFFS] if with_grad else []),
                                  later=int(with_grad))
    out = relu - gated[0]
    if not with_grad:
        return out
    step = _encode_bits(ctx, ctx.public(1, x.shape, frac_bits=0) - select.bit)     # [x >= 0] at scale f
    dg = gated[1] - 2 * select.times(gated[1])                 # sgn(x) g'(|x|): no truncation
    return out, step - dg


def tanh(ctx, x: torch.Tensor, bits: int = 32) -> torch.Tensor:
    """tanh(x), max error about 1e-3. Cost: tanh_cost()."""
    _, select, (r_inside,) = _pieces(ctx, x, bits, [TANH_COEFFS], later=1)
    magnitude = ctx.public(1.0, x.shape) - 2 * r_inside
    return magnitude - 2 * select.times(magnitude)             # sgn(x) magnitude


def sigmoid(ctx, x: torch.Tensor, bits: int = 32) -> torch.Tensor:
    """1 / (1 + e^-x) = (1 + tanh(x / 2)) / 2."""
    t = tanh(ctx, fixed.mul_public(ctx, x, 0.5), bits)
    return fixed.mul_public(ctx, t + ctx.public(1.0), 0.5)


def _encode_bits(ctx, bits):
    return bits << ctx.frac_bits


def _pieces_cost(n: int, numel: int, bits: int, polynomials: int, frac_bits: int) -> Cost:
    compared = bits - _sign_resolution(n, frac_bits)
    inside = bits - _inside_resolution(n, frac_bits)
    return (sign_cost(n, numel, compared, factor=numel)
            + parallel_cost(fixed.powers_cost(n, numel, DEGREE, _U_SHIFT, (), frac_bits), sign_cost(n, numel, inside))
            + truncations_cost(n, [(numel, fixed.combined_shift(frac_bits))] * polynomials))


def gelu_cost(n: int, numel: int, bits: int = 32, with_grad: bool = False,
              frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    if not with_grad:
        return _pieces_cost(n, numel, bits, 1, frac_bits)
    return _pieces_cost(n, numel, bits, 2, frac_bits) + select_times_cost(n, numel)


def tanh_cost(n: int, numel: int, bits: int = 32, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return _pieces_cost(n, numel, bits, 1, frac_bits) + select_times_cost(n, numel)


def sigmoid_cost(n: int, numel: int, bits: int = 32, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return (fixed.mul_public_cost(n, numel, frac_bits=frac_bits) + tanh_cost(n, numel, bits, frac_bits)
            + fixed.mul_public_cost(n, numel, frac_bits=frac_bits))
