"""Ghost clipping of Linear layers on shares, and the per-layer choice between it and forming
the per-example gradients, by their declared costs.

For a Linear weight with per-example inputs x_b [T, d] and output gradients g_b [T, p] (shares,
nn.grad_sample.LinearFactors), G_b = g_b^T x_b, and without forming G_b (Goodfellow 2015; Li
et al. 2022):
  ||G_b||_F^2 = sum_{t,s} X_b[t,s] Y_b[t,s],  X_b = x_b x_b^T,  Y_b = g_b g_b^T   (Grams [T, T])
  sum_b w_b G_b = (w * g)^T x         (or g^T (w * x), scaling the narrower of x and g).
Formed instead: G_b by one batched Beaver matmul, Beaver squares of its B p d values and the
rows of the weighted-sum matmul. Ghost costs O(B T (d + p) + B T^2) ring elements, formed
O(B T (d + p) + 3 B p d): ghost wins for full layers (T = 64, d = p = 384), formed for LoRA
adapters (p or d = r); `prefer_ghost` compares the formulas' bytes per party.
Reveals nothing: Beaver products and truncations only.

Fixed point (f fractional bits): X_b is kept as X_b / 2^h and Y_b as Y_b 2^(h - 2k), each at f
bits, so that their product summed is ||G_b / 2^k||^2 at 2f bits, the units of the formed
rows' squares (dp_sgd.norm_shift's k). h balances the Grams' magnitudes for unit-scale inputs
(X[t,t] ~ d) and norms near the clip threshold. Each Gram entry is rounded by < 2^-f, so
  | error of ||G_b / 2^k||^2 | < 2^-f sum_{t,s} (|X_b[t,s]| / 2^h + |Y_b[t,s]| 2^(h - 2k)) + T^2 2^-2f;
with stochastic rounding the errors are unbiased and the typical error is ~T times smaller.
"""
import math

import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS
from mpcft.protocols import beaver
from mpcft.protocols.cost import RING_BYTES, Cost, open_cost
from mpcft.protocols.truncation import truncate, truncate_cost, truncate_dealer_bytes, truncate_many, truncations_cost


def gram_balance(threshold: float, shift: int, positions: int, in_features: int) -> int:
    """h with X / 2^h and Y 2^(h - 2k) of about the same size when X[t,t] ~ d and
    ||G||^2 ~ T d Y[t,t] ~ threshold^2 (public quantities only)."""
    scaled = threshold / 2.0 ** shift
    return round(math.log2(in_features) + 0.5 * math.log2(positions) - math.log2(scaled))


def ghost_squared_norms(ctx, factors: list, threshold: float, shift: int) -> torch.Tensor:
    """Shares [B] of sum over the layers of ||G_b / 2^shift||^2 at 2f fractional bits.

    One round of Beaver matmuls for every layer's two Grams, one of truncations, one Beaver
    product of all Grams. Cost: ghost_norm_cost per layer (rounds shared), ghost_norm_dealer_bytes."""
    f = ctx.frac_bits
    pairs, bits = [], []
    for lf in factors:
        h = gram_balance(threshold, shift, lf.positions, lf.x.shape[-1])
        pairs += [(lf.x, lf.x.mT.contiguous()), (lf.grad, lf.grad.mT.contiguous())]
        bits += [f + h, f - h + 2 * shift]
    if not all(0 < b < 62 for b in bits):
        raise ValueError(f"ghost norms: Gram truncations {bits} outside (0, 62): threshold out of range")
    grams = truncate_many(ctx, list(zip(beaver.matmuls(ctx, pairs), bits)))
    batch = grams[0].shape[0]
    xs = torch.cat([g.reshape(batch, -1) for g in grams[0::2]], 1)
    ys = torch.cat([g.reshape(batch, -1) for g in grams[1::2]], 1)
    return beaver.mul(ctx, xs, ys).sum(-1)


def ghost_weighted_sums(ctx, factors: list, weight: torch.Tensor, extra_bits: int) -> list:
    """Shares [p, d] of sum_b w_b G_b for each layer, weight: shares [B] of w_b 2^extra_bits at
    f bits. The narrower factor of each layer is scaled by w 2^extra_bits (one Beaver product
    for all layers, one truncation: the extra bits keep small weights' precision), then one
    round of Beaver matmuls and one of truncations by f + extra_bits; the same range as
    dp_sgd.weighted_rows. Cost: ghost_sum_cost per layer (rounds shared), ghost_sum_dealer_bytes."""
    f = ctx.frac_bits
    batch = weight.shape[0]
    narrow = [lf.x if lf.x.shape[-1] < lf.grad.shape[-1] else lf.grad for lf in factors]
    flat = torch.cat([t.reshape(batch, -1) for t in narrow], 1)
    scaled = truncate(ctx, beaver.mul(ctx, flat, weight.reshape(batch, 1)), f)
    pairs, start = [], 0
    for lf, t in zip(factors, narrow):
        part = scaled[:, start:start + t[0].numel()].reshape(t.shape)
        start += t[0].numel()
        x, g = (part, lf.grad) if t is lf.x else (lf.x, part)
        pairs.append((g.reshape(-1, g.shape[-1]).mT.contiguous(), x.reshape(-1, x.shape[-1])))
    return truncate_many(ctx, [(z, f + extra_bits) for z in beaver.matmuls(ctx, pairs)])


def ghost_norm_cost(n: int, batch: int, positions: int, in_features: int, out_features: int,
                    threshold: float, shift: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    """Cost of ghost_squared_norms for one layer: the Grams' Beaver matmuls, their truncations
    (by f + h and f - h + 2 shift), the Beaver product of the Grams."""
    b, t, f = batch, positions, frac_bits
    grams = b * t * t
    h = gram_balance(threshold, shift, positions, in_features)
    return (open_cost(n, 2 * b * t * (in_features + out_features))
            + truncations_cost(n, [(grams, f + h), (grams, f - h + 2 * shift)]) + open_cost(n, 2 * grams))


def ghost_norm_dealer_bytes(batch: int, positions: int, in_features: int, out_features: int,
                            threshold: float, shift: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> int:
    """Dealer bytes (to all parties) of ghost_squared_norms for one layer: the Grams' matmul
    triples and truncations (by f + h and f - h + 2 shift), the product's triple."""
    grams = batch * positions * positions
    h = gram_balance(threshold, shift, positions, in_features)
    return (RING_BYTES * 3 * grams + truncate_dealer_bytes(grams, frac_bits + h)
            + truncate_dealer_bytes(grams, frac_bits - h + 2 * shift))


def ghost_sum_cost(n: int, batch: int, positions: int, in_features: int, out_features: int,
                   extra_bits: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    """Cost of ghost_weighted_sums for one layer: the scaling's Beaver product and truncation by
    f, the Beaver matmul and its truncation by f + extra_bits."""
    b, t, d, p = batch, positions, in_features, out_features
    narrow = b * t * min(d, p)
    return (open_cost(n, narrow + b) + truncate_cost(n, narrow, frac_bits) + open_cost(n, b * t * (d + p))
            + truncate_cost(n, p * d, frac_bits + extra_bits))


def ghost_sum_dealer_bytes(batch: int, positions: int, in_features: int, out_features: int,
                           extra_bits: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> int:
    """Dealer bytes (to all parties) of ghost_weighted_sums for one layer: the scaling's triple
    and truncation by f, the matmul triple and its truncation by f + extra_bits."""
    narrow = batch * positions * min(in_features, out_features)
    pd = out_features * in_features
    return (RING_BYTES * (narrow + pd) + truncate_dealer_bytes(narrow, frac_bits)
            + truncate_dealer_bytes(pd, frac_bits + extra_bits))


def formed_cost(n: int, batch: int, positions: int, in_features: int, out_features: int,
                shift: int, extra_bits: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    """Cost of forming one layer's G_b (LinearFactors.materialise), its rows' squares
    (dp_sgd.row_squares, with the truncation by `shift` if it is positive) and its weighted sum
    (dp_sgd.weighted_rows, truncated by f + extra_bits), alone."""
    b, t, d, p = batch, positions, in_features, out_features
    size = b * p * d
    total = open_cost(n, b * t * (d + p)) + truncate_cost(n, size, frac_bits)          # form
    if shift:
        total = total + truncate_cost(n, size, shift)
    return (total + open_cost(n, size)                                                   # squares
            + open_cost(n, b + size) + truncate_cost(n, p * d, frac_bits + extra_bits))   # sum


def formed_dealer_bytes(batch: int, positions: int, in_features: int, out_features: int, shift: int,
                        extra_bits: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> int:
    """Dealer bytes (to all parties) of formed_cost's work: the matmul triple and truncation by
    f, the shift's truncation (if shift > 0), the squares, the weighted sum's matmul triple and
    truncation by f + extra_bits."""
    size, pd = batch * out_features * in_features, out_features * in_features
    shifted = truncate_dealer_bytes(size, shift) if shift else 0
    return (RING_BYTES * (size + size + pd) + truncate_dealer_bytes(size, frac_bits) + shifted
            + truncate_dealer_bytes(pd, frac_bits + extra_bits))


def ghost_cost(n: int, batch: int, positions: int, in_features: int, out_features: int,
               threshold: float, shift: int, extra_bits: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    """Cost of one layer's ghost norms and weighted sum, alone."""
    shape = (batch, positions, in_features, out_features)
    return (ghost_norm_cost(n, *shape, threshold, shift, frac_bits)
            + ghost_sum_cost(n, *shape, extra_bits, frac_bits))


def prefer_ghost(n: int, batch: int, positions: int, in_features: int, out_features: int,
                 threshold: float, shift: int, extra_bits: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> bool:
    """Whether the ghost route sends fewer bytes per party than forming G_b for this layer."""
    shape = (batch, positions, in_features, out_features)
    return (ghost_cost(n, *shape, threshold, shift, extra_bits, frac_bits).bytes_sent
            < formed_cost(n, *shape, shift, extra_bits, frac_bits).bytes_sent)
