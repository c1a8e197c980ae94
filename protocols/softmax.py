"""Softmax along the last dimension, its backward pass, and cross-entropy.

softmax(x) = e / sum(e), e = exp(x - M) [* mask], for any M (the ratio does not depend on it):
  M is a row's maximum within 1, by a tournament of coarse comparisons (comparison.max_along
  with resolution_bits k: levels (n - 1) 2^k <= 2^f, bits = 32: |x| < 4096): one of the row's
  values, so x - M <= 1 and some x - M = 0;
  exp of inputs <= 1 (exponential.exp; clamp=True guards spreads above 150),
  reciprocal of the row sums, which lie in [1, e n] (reciprocal.reciprocal), one product.
A public mask (True = attend) is applied exactly: masked logits are lifted out of the max
by a public offset and their exponentials multiplied by 0, so they contribute nothing. A
secret mask (shares of 0/1, scale 1, e.g. padding that must stay private) multiplies the
exponentials in one Beaver round; its masked logits stay in the max, which is harmless.
Backward: dx = y * (g - sum(g * y)). Cross-entropy with shared one-hot labels: gradient
(softmax - labels) / batch, and optionally the mean loss via log of the row sums.
Reveals nothing but the output shares.
"""
import math

import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS

from . import beaver, fixed
from .comparison import max_along, max_along_cost, resolution_bits_within
from .cost import Cost
from .exponential import exp, exp_cost
from .reciprocal import log, reciprocal, reciprocal_cost
from .truncation import truncate, truncate_cost

_MASK_OFFSET = 1024.0


def max_resolution_bits(n: int, size: int, frac_bits: int, bits: int) -> int:
    """k for the row maximum's coarse comparisons: levels (n - 1) 2^k <= 2^frac_bits, so that
    the tournament's result lies within 1 of the maximum."""
    if size < 2:
        return 0
    return min(bits - 1, resolution_bits_within(n, frac_bits, repeats=math.ceil(math.log2(size))))


def _row_sum_bound(size: int) -> float:
    """Above every row sum: size terms of at most e^1 (x - M <= 1), with a margin."""
    return size * math.e * 1.1


def _exponentials(ctx, x, mask, shared_mask, clamp: bool, bits: int):
    """(x - max, masked exp(x - max), row sums): the common part of softmax and cross-entropy."""
    keep = None
    if mask is not None:
        keep = torch.as_tensor(mask).to(device=x.device, dtype=torch.bool).expand(x.shape).to(torch.int64)
        x = x * keep + ctx.public(-_MASK_OFFSET, x.shape) * (1 - keep)
    k = max_resolution_bits(ctx.world_size, x.shape[-1], ctx.frac_bits, bits)
    shifted = x - max_along(ctx, x, -1, bits, k)
    e = exp(ctx, shifted, clamp=clamp, bits=bits)
    if keep is not None:
        e = e * keep
    if shared_mask is not None:
        e = beaver.mul(ctx, e, shared_mask)            # mask has scale 1: no truncation
    return shifted, e, e.sum(-1, keepdim=True)


def _normalise(ctx, e, total, bits: int):
    inverse = reciprocal(ctx, total, lo=0.5, hi=_row_sum_bound(e.shape[-1]), bits=bits)
    return fixed.mul(ctx, e, inverse)


def softmax(ctx, x: torch.Tensor, mask=None, clamp: bool = False, bits: int = 32,
            shared_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shares of softmax(x) over the last dim; mask: public bool tensor broadcastable to x;
    shared_mask: shares of a 0/1 tensor (scale 1) broadcastable to x."""
    _, e, total = _exponentials(ctx, x, mask, shared_mask, clamp, bits)
    return _normalise(ctx, e, total, bits)


def softmax_backward(ctx, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/dx = y * (g - sum(g * y)) for y = softmax(x), g = dL/dy; y opened masked once for
    both products (beaver.MaskedFactor)."""
    rows = y.shape[:-1] + (1,)
    factor = beaver.MaskedFactor(ctx, y, [grad.shape, rows])
    gy = truncate(ctx, factor.times(grad))
    return gy - truncate(ctx, factor.times(gy.sum(-1, keepdim=True)))


def cross_entropy(ctx, logits: torch.Tensor, labels: torch.Tensor, with_loss: bool = False,
                  bits: int = 32):
    """Mean cross-entropy of [batch, classes] logits against shared one-hot labels (scale f).

    Returns (gradient w.r.t. logits, loss or None). The loss costs one product and a log.
    The exponentials are clamped (logit spreads above 150 saturate instead of wrapping).
    """
    batch, classes = logits.shape
    # [batch, classes] is small: clamp, so diverging logits saturate instead of wrapping
    shifted, e, total = _exponentials(ctx, logits, None, None, clamp=True, bits=bits)
    probs = _normalise(ctx, e, total, bits)
    grad = fixed.mul_public(ctx, probs - labels, 1.0 / batch)
    if not with_loss:
        return grad, None
    picked = fixed.mul(ctx, labels, shifted).sum(-1)             # z_y for each row
    per_row = log(ctx, total.reshape(-1), lo=0.5, hi=_row_sum_bound(classes), bits=bits) - picked
    return grad, fixed.mul_public(ctx, per_row.sum(), 1.0 / batch)


def softmax_cost(n: int, shape, clamp: bool = False, bits: int = 32,
                 frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    numel, size = int(torch.tensor(shape).prod()), shape[-1]
    rows = numel // size
    k = max_resolution_bits(n, size, frac_bits, bits)
    return (max_along_cost(n, numel, size, bits, k) + exp_cost(n, numel, clamp, bits, frac_bits)
            + reciprocal_cost(n, rows, 0.5, _row_sum_bound(size), bits) + fixed.mul_cost(n, numel, rows, numel))


def softmax_backward_cost(n: int, shape) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    return beaver.masked_factor_cost(n, numel, [numel, rows]) + truncate_cost(n, numel) + truncate_cost(n, numel)
