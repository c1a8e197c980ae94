"""Exponential of shared fixed-point values.

exp(x) = p(x / 2^k)^(2^k) with p the degree-4 Taylor polynomial of e^y and k = 6 squarings.
For x in [-EXP_MIN_INPUT, EXP_MAX_INPUT] the absolute error is about 1e-4 near x = 0
(fixed-point rounding, doubled by each squaring) and far smaller below; the approximation
error e^x * |x|^5 / (120 * 64^4) is < 1e-8. Outside that range p(y)^64 is meaningless:
softmax subtracts the row maximum first (inputs <= 0), and can clamp with clamp=True.
Reveals nothing (products and truncations only). Cost: exp_cost() (18 rounds).
"""
import torch

from . import fixed
from .comparison import relu, sign_cost
from .cost import FREE, Cost
from .truncation import truncate, truncate_cost

SQUARINGS = 6
EXP_MIN_INPUT = 150.0
EXP_MAX_INPUT = 7.0   # e^7 ~ 1097: squares of intermediates stay below 2^(62 - 2f)
_TAYLOR = [1.0, 1.0, 1 / 2, 1 / 6, 1 / 24]


def exp(ctx, x: torch.Tensor, clamp: bool = False, bits: int = 32) -> torch.Tensor:
    """Shares of e^x for x in [-150, 7]; clamp=True maps x < -150 to -150 first (one relu)."""
    if clamp:  # max(x, -m) = -m + relu(x + m)
        m = EXP_MIN_INPUT
        x = relu(ctx, x + ctx.public(m), bits) + ctx.public(-m)
    y = truncate(ctx, x, SQUARINGS)               # x / 64, stochastic rounding
    z = fixed.polynomial(ctx, y, _TAYLOR)
    for _ in range(SQUARINGS):
        z = fixed.square(ctx, z)
    return z


def exp_cost(n: int, numel: int, clamp: bool = False, bits: int = 32) -> Cost:
    total = sign_cost(n, numel, bits, with_product=True) if clamp else FREE
    total = total + truncate_cost(n, numel) + fixed.polynomial_cost(n, numel, len(_TAYLOR) - 1)
    for _ in range(SQUARINGS):
        total = total + fixed.square_cost(n, numel)
    return total
