"""Softmax along the last dimension, its backward pass, and cross-entropy.

softmax(x) = e / sum(e), e = exp(x - max(x)) [* mask]:
  max by a comparison tournament (comparison.max_along, bits = 32: |x| < 4096),
  exp of non-positive inputs (exponential.exp; clamp=True guards spreads above 150),
  reciprocal of the row sums, which lie in [1, n] (reciprocal.reciprocal), one product.
A public mask (True = attend) is applied exactly: masked logits are lifted out of the max
by a public offset and their exponentials multiplied by 0, so they contribute nothing. A
secret mask (shares of 0/1, scale 1, e.g. padding that must stay private) multiplies the
exponentials in one Beaver round; its masked logits stay in the max, which is harmless.
Backward: dx = y * (g - sum(g * y)). Cross-entropy with shared one-hot labels: gradient
(softmax - labels) / batch, and optionally the mean loss via log of the row sums.
Reveals nothing but the output shares.
"""
import torch

from . import beaver, fixed
from .comparison import max_along, max_along_cost
from .cost import Cost
from .exponential import exp, exp_cost
from .reciprocal import log, reciprocal, reciprocal_cost

_MASK_OFFSET = 1024.0


def _exponentials(ctx, x, mask, shared_mask, clamp: bool, bits: int):
    """(x - max, masked exp(x - max), row sums): the common part of softmax and cross-entropy."""
    keep = None
    if mask is not None:
        keep = torch.as_tensor(mask).to(device=x.device, dtype=torch.bool).expand(x.shape).to(torch.int64)
        x = x * keep + ctx.public(-_MASK_OFFSET, x.shape) * (1 - keep)
    shifted = x - max_along(ctx, x, -1, bits)
    e = exp(ctx, shifted, clamp=clamp, bits=bits)
    if keep is not None:
        e = e * keep
    if shared_mask is not None:
        e = beaver.mul(ctx, e, shared_mask)            # mask has scale 1: no truncation
    return shifted, e, e.sum(-1, keepdim=True)


def _normalise(ctx, e, total, bits: int):
    inverse = reciprocal(ctx, total, lo=0.5, hi=float(e.shape[-1]) * 1.1, bits=bits)
    return fixed.mul(ctx, e, inverse)


def softmax(ctx, x: torch.Tensor, mask=None, clamp: bool = False, bits: int = 32,
            shared_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shares of softmax(x) over the last dim; mask: public bool tensor broadcastable to x;
    shared_mask: shares of a 0/1 tensor (scale 1) broadcastable to x."""
    _, e, total = _exponentials(ctx, x, mask, shared_mask, clamp, bits)
    return _normalise(ctx, e, total, bits)


def softmax_backward(ctx, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/dx = y * (g - sum(g * y)) for y = softmax(x), g = dL/dy."""
    gy = fixed.mul(ctx, grad, y)
    return gy - fixed.mul(ctx, y, gy.sum(-1, keepdim=True))


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
    per_row = log(ctx, total.reshape(-1), lo=0.5, hi=classes * 1.1, bits=bits) - picked
    return grad, fixed.mul_public(ctx, per_row.sum(), 1.0 / batch)


def softmax_cost(n: int, shape, clamp: bool = False, bits: int = 32) -> Cost:
    numel, size = int(torch.tensor(shape).prod()), shape[-1]
    rows = numel // size
    return (max_along_cost(n, numel, size, bits) + exp_cost(n, numel, clamp, bits)
            + reciprocal_cost(n, rows, 0.5, size * 1.1, bits) + fixed.mul_cost(n, numel, rows, numel))


def softmax_backward_cost(n: int, shape) -> Cost:
    numel = int(torch.tensor(shape).prod())
    rows = numel // shape[-1]
    return fixed.mul_cost(n, numel, numel) + fixed.mul_cost(n, numel, rows, numel)
