"""Layer normalisation over the last dimension and its backward pass.

xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), var = mean((x - mean)^2):
two truncations for the moments, inv_sqrt with range reduction for rstd (reciprocal.py),
one broadcast product. The affine part (gamma, beta) is left to the caller, which knows
whether they are public (frozen) or shared (trained).
Backward, with g = dL/dxhat: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
Accuracy: relative error of rstd below 1e-4 for var + eps in [var_lo, var_hi].
Reveals nothing but the output shares.
"""
import torch

from . import beaver, fixed
from .cost import Cost
from .reciprocal import inv_sqrt, inv_sqrt_cost
from .truncation import truncate, truncate_cost


def layernorm(ctx, x: torch.Tensor, eps: float = 1e-12, var_lo: float = 1e-4, var_hi: float = 1e4):
    """Returns (xhat, rstd) with rstd of shape [..., 1]."""
    centred = x - fixed.mean_last(ctx, x)
    var = fixed.add_public(ctx, fixed.mean_last(ctx, truncate(ctx, beaver.square(ctx, centred))), eps)
    rstd = inv_sqrt(ctx, var, lo=var_lo, hi=var_hi)
    return fixed.mul(ctx, centred, rstd), rstd


def layernorm_backward(ctx, grad: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    mean_g = fixed.mean_last(ctx, grad)
    mean_gx = fixed.mean_last(ctx, fixed.mul(ctx, grad, xhat))
    inner = grad - mean_g - fixed.mul(ctx, xhat, mean_gx)
    return fixed.mul(ctx, inner, rstd)


def layernorm_cost(n: int, shape, var_lo: float = 1e-4, var_hi: float = 1e4) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    return (truncate_cost(n, rows) + fixed.square_cost(n, numel) + truncate_cost(n, rows)
            + inv_sqrt_cost(n, rows, var_lo, var_hi) + fixed.mul_cost(n, numel, rows, numel))


def layernorm_backward_cost(n: int, shape) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    return (truncate_cost(n, rows) + fixed.mul_cost(n, numel, numel) + truncate_cost(n, rows)
            + fixed.mul_cost(n, numel, rows, numel) + fixed.mul_cost(n, numel, rows, numel))
