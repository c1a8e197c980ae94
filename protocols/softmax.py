"""Softmax along the last dimension, its backward pass, and cross-entropy.

softmax(x) = e / sum(e), e = exp(x - M) [* mask], for any M (the ratio does not depend on it):
  M is a row's maximum within 1, by a tournament of coarse comparisons (comparison.max_along
  with resolution_bits k: levels (n - 1) 2^k <= 2^f, bits = 32: |x| < 4096): one of the row's
  values, so x - M <= 1 and some x - M = 0;
  exp of inputs <= 1 (exponential.exp; clamp=True guards spreads above 150),
  reciprocal of the row sums, which lie in [1, e n] (reciprocal.reciprocal), one product.
A public mask (True = attend) is applied exactly: masked logits are lifted out of the max
by a public offset and their exponentials multiplied by 0, so they contribute nothing. A
secret mask m (shares of 0/1, scale 1, e.g. padding that must stay private) lowers the
logits by 1024 (1 - m), locally; with clamp=True, exp's gate then makes the masked
exponentials exactly 0 (no round, no bytes) while a masked logit is at most 850 above its
row's largest kept one and a row's logits span less than 3072 (the max's comparisons take
differences below 4096, less the offset; attention scores are far inside both); without
clamp it multiplies the exponentials in one Beaver round instead.
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
from .reciprocal import log, log_cost, reciprocal, reciprocal_cost
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
    lowered = shared_mask is not None and clamp
    if lowered:                                        # x - 1024 (1 - m): local, m is 0/1
        x = x - ctx.public(_MASK_OFFSET, x.shape) + shared_mask * round(_MASK_OFFSET * 2 ** ctx.frac_bits)
    k = max_resolution_bits(ctx.world_size, x.shape[-1], ctx.frac_bits, bits)
    shifted = x - max_along(ctx, x, -1, bits, k)
    e = exp(ctx, shifted, clamp=clamp, bits=bits)
    if keep is not None:
        e = e * keep
    if shared_mask is not None and not lowered:
        e = beaver.mul(ctx, e, shared_mask)            # mask has scale 1: no truncation
    return shifted, e, e.sum(-1, keepdim=True)


def _inverse(ctx, total, size: int, bits: int):
    """1 / the row sums of `size` exponentials."""
    return reciprocal(ctx, total, lo=0.5, hi=_row_sum_bound(size), bits=bits)


def softmax(ctx, x: torch.Tensor, mask=None, clamp: bool = False, bits: int = 32,
            shared_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shares of softmax(x) over the last dim; mask: public bool tensor broadcastable to x;
    shared_mask: shares of a 0/1 tensor (scale 1) broadcastable to x."""
    _, e, total = _exponentials(ctx, x, mask, shared_mask, clamp, bits)
    return fixed.mul(ctx, e, _inverse(ctx, total, x.shape[-1], bits))


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
    The exponentials are clamped (logit spreads above 150 saturate instead of wrapping). The
    gradient (e / sum(e) - labels) / batch takes one truncation by 2f of the untruncated
    product minus the labels at 2f, times 1/batch at f bits. Cost: cross_entropy_cost.
    """
    batch, classes = logits.shape
    # [batch, classes] is small: clamp, so diverging logits saturate instead of wrapping
    shifted, e, total = _exponentials(ctx, logits, None, None, clamp=True, bits=bits)
    probs_minus_labels = beaver.mul(ctx, e, _inverse(ctx, total, classes, bits)) - (labels << ctx.frac_bits)
    grad = truncate(ctx, probs_minus_labels * round(2.0 ** ctx.frac_bits / batch), 2 * ctx.frac_bits)
    if not with_loss:
        return grad, None
    picked = fixed.mul(ctx, labels, shifted).sum(-1)             # z_y for each row
    per_row = log(ctx, total.reshape(-1), lo=0.5, hi=_row_sum_bound(classes), bits=bits) - picked
    return grad, fixed.mul_public(ctx, per_row.sum(), 1.0 / batch)


def _exponentials_cost(n: int, shape, clamp: bool, bits: int, frac_bits: int, shared_mask=None) -> Cost:
    """shared_mask: the mask's shape, if secret."""
    numel, size = int(torch.tensor(shape).prod()), shape[-1]
    k = max_resolution_bits(n, size, frac_bits, bits)
    total = max_along_cost(n, numel, size, bits, k) + exp_cost(n, numel, clamp, bits, frac_bits)
    if shared_mask is not None and not clamp:
        total = total + beaver.mul_cost(n, numel, int(torch.tensor(shared_mask).prod()))
    return total


def _inverse_cost(n: int, rows: int, size: int, bits: int) -> Cost:
    return reciprocal_cost(n, rows, 0.5, _row_sum_bound(size), bits)


def softmax_cost(n: int, shape, clamp: bool = False, bits: int = 32,
                 frac_bits: int = DEFAULT_FRACTIONAL_BITS, shared_mask=None) -> Cost:
    """shared_mask: the shape of a secret mask, if one is given."""
    numel, size = int(torch.tensor(shape).prod()), shape[-1]
    return (_exponentials_cost(n, shape, clamp, bits, frac_bits, shared_mask)
            + _inverse_cost(n, numel // size, size, bits) + fixed.mul_cost(n, numel, numel // size, numel))


def cross_entropy_cost(n: int, batch: int, classes: int, with_loss: bool = False, bits: int = 32,
                       frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    numel = batch * classes
    total = (_exponentials_cost(n, (batch, classes), True, bits, frac_bits) + _inverse_cost(n, batch, classes, bits)
             + beaver.mul_cost(n, numel, batch) + truncate_cost(n, numel, 2 * frac_bits))
    if with_loss:
        total = (total + fixed.mul_cost(n, numel, numel) + log_cost(n, batch, 0.5, _row_sum_bound(classes), bits)
                 + fixed.mul_public_cost(n, 1, frac_bits=frac_bits))
    return total


def softmax_backward_cost(n: int, shape) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    return beaver.masked_factor_cost(n, numel, [numel, rows]) + truncate_cost(n, numel) + truncate_cost(n, numel)
