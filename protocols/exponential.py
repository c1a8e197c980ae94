"""Exponential of shared fixed-point values.

exp(x) = p(x / 2^k)^(2^k) with p the degree-4 Taylor polynomial of e^y and k = 6 squarings.
Every squaring multiplies the output of a truncation by itself, which is local
(truncation.FusedTruncations): the polynomial takes 2 rounds and each squaring 1.
For x in [-EXP_MIN_INPUT, EXP_MAX_INPUT] the absolute error is about 1e-4 near x = 0
(fixed-point rounding, doubled by each squaring) and far smaller below; the approximation
error e^x * |x|^5 / (120 * 64^4) is < 1e-8. Outside that range p(y)^64 is meaningless:
softmax subtracts the row maximum first (inputs <= 1), and can clamp with clamp=True: then a
coarse comparison (resolution 2^f, over bits - f bits) gives s = [x > -150] beside the
polynomial and squarings (protocols.parallel: no rounds of its own) and gates the last
truncation (comparison.SignGate: local), so the result is exactly 0 below -150 - (n - 1),
whatever p made of it there, and p(x / 64)^64 < 1e-18 (0 at any f <= 60) in between.
Reveals nothing (truncations and a comparison only). Cost: exp_cost() (9 rounds, clamped too).
"""
import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS

from . import fixed
from .comparison import SignGate, sign_cost
from .cost import Cost
from .parallel import parallel, parallel_cost
from .truncation import FusedTruncations, truncate, truncate_cost

SQUARINGS = 6
EXP_MIN_INPUT = 150.0
EXP_MAX_INPUT = 7.0   # e^7 ~ 1097: squares of intermediates stay below 2^(62 - 2f)
_TAYLOR = [1.0, 1.0, 1 / 2, 1 / 6, 1 / 24]


def exp(ctx, x: torch.Tensor, clamp: bool = False, bits: int = 32) -> torch.Tensor:
    """Shares of e^x for x in [-150, 7]; clamp=True gives 0 for x < -150 (any |x| < 2^(bits - f))."""
    if not clamp:
        return truncate(ctx, _untruncated(ctx, x))
    f = ctx.frac_bits
    above = lambda c: SignGate(c, c.public(-EXP_MIN_INPUT, x.shape) - x, bits, [f], resolution_bits=f)  # noqa: E731
    acc, gate = parallel(ctx, lambda c: _untruncated(c, x), above)      # gate.bit = [-150 - x < 0]
    return gate.truncate([acc])[0]


def _untruncated(ctx, x: torch.Tensor) -> torch.Tensor:
    """p(x / 64)^64 at 2f fractional bits, before its last truncation."""
    terms, _ = fixed.powers(ctx, x, SQUARINGS, len(_TAYLOR) - 1)     # y = x / 64 and its powers
    acc, shift = fixed.combine_powers(ctx, terms, _TAYLOR[1:], _TAYLOR[0])
    shifts = [shift] + [ctx.frac_bits] * (SQUARINGS - 1)
    squarings = FusedTruncations(ctx, x.shape, shifts, [(i, i) for i in range(SQUARINGS)])
    for i in range(SQUARINGS):                    # acc: p(y)^(2^i), untruncated
        squarings.truncate({i: acc})
        acc = squarings.product(i, i)
    return acc


def exp_cost(n: int, numel: int, clamp: bool = False, bits: int = 32,
             frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    untruncated = _untruncated_cost(n, numel, frac_bits)
    if clamp:
        untruncated = parallel_cost(untruncated, sign_cost(n, numel, bits - frac_bits))
    return untruncated + truncate_cost(n, numel, frac_bits)


def _untruncated_cost(n: int, numel: int, frac_bits: int) -> Cost:
    total = fixed.powers_cost(n, numel, len(_TAYLOR) - 1, SQUARINGS, (), frac_bits)
    for shift in [fixed.combined_shift(frac_bits)] + [frac_bits] * (SQUARINGS - 1):
        total = total + truncate_cost(n, numel, shift)
    return total
