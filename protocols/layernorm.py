"""Layer normalisation over the last dimension and its backward pass.

xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), var = mean((x - mean)^2):
two truncations for the moments, inv_sqrt with range reduction for rstd (reciprocal.py),
one broadcast product. The affine part (gamma, beta) is left to the caller, which knows
whether they are public (frozen) or shared (trained).
Backward, with g = dL/dxhat: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), mean(g)
beside the rest (protocols.parallel). Both passes open the value that two products share
masked once (beaver.MaskedFactor): x - mean for its square and its product with rstd, xhat
for its products with g and mean(g * xhat).
Accuracy: relative error of rstd below 1e-4 for var + eps in [var_lo, var_hi].
Reveals nothing but the output shares.
"""
import math

import torch

from . import beaver, fixed
from .cost import Cost
from .parallel import parallel, parallel_cost
from .reciprocal import inv_sqrt, inv_sqrt_cost
from .truncation import truncate, truncate_cost


def layernorm(ctx, x: torch.Tensor, eps: float = 1e-12, var_lo: float = 1e-4, var_hi: float = 1e4):
    """Returns (xhat, rstd) with rstd of shape [..., 1].

    rstd = sqrt(d) / sqrt(S) with S = sum((x - mean)^2) + d * eps: S carries d times more
    significant bits than var at 2^-f (var = 1e-3 would otherwise be resolved to 1e-3).
    """
    d = x.shape[-1]
    centred = x - fixed.mean_last(ctx, x)
    factor = beaver.MaskedFactor(ctx, centred, [centred.shape[:-1] + (1,)], square=True)
    squares = truncate(ctx, factor.square().sum(-1, keepdim=True))
    total = squares + ctx.public(d * eps)
    rstd = inv_sqrt(ctx, total, lo=d * var_lo, hi=d * var_hi, bits=_sum_bits(d, var_hi),
                    multiplier=math.sqrt(d))
    return truncate(ctx, factor.times(rstd)), rstd


def _sum_bits(d: int, var_hi: float) -> int:
    """Comparison width for S <= d * var_hi: |S - 2^j| < 2^(bits - f) with f <= 20."""
    return 21 + max(20, math.ceil(math.log2(d * var_hi)) + 1)


def layernorm_backward(ctx, grad: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """mean(g) beside the rest (protocols.parallel: its round is shared); mean(g * xhat) from
    the row sums of the untruncated products, truncated as rows."""
    def projected(c):
        factor = beaver.MaskedFactor(c, xhat, [grad.shape, rstd.shape])      # xhat opened masked once
        mean_gx = fixed.mean_of_sums(c, truncate(c, factor.times(grad).sum(-1, keepdim=True)), grad.shape[-1])
        return truncate(c, factor.times(mean_gx))
    along_xhat, mean_g = parallel(ctx, projected, lambda c: fixed.mean_last(c, grad))
    return fixed.mul(ctx, grad - mean_g - along_xhat, rstd)


def layernorm_cost(n: int, shape, var_lo: float = 1e-4, var_hi: float = 1e4) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    d = shape[-1]
    return (fixed.mul_public_cost(n, rows, fixed.MEAN_EXTRA_BITS) + beaver.masked_factor_cost(n, numel, [0, rows])
            + truncate_cost(n, rows) + truncate_cost(n, numel)
            + inv_sqrt_cost(n, rows, d * var_lo, d * var_hi, _sum_bits(d, var_hi), multiplier=math.sqrt(d)))


def layernorm_backward_cost(n: int, shape) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    projected = (beaver.masked_factor_cost(n, numel, [numel, rows]) + truncate_cost(n, rows)
                 + fixed.mul_public_cost(n, rows, fixed.MEAN_EXTRA_BITS) + truncate_cost(n, numel))
    return (parallel_cost(projected, fixed.mul_public_cost(n, rows, fixed.MEAN_EXTRA_BITS))
            + fixed.mul_cost(n, numel, rows, numel))
