"""Weighted FedAvg of secret-shared client updates, with clipping and noise, nothing opened.

Client k contributes shares of its update U_k (d values, fixed point) and, with secret
weights, of its example count n_k (an integer). The parties compute shares of
  A = sum_k w_k c_k U_k + z / K,     c_k = min(1, C / ||U_k||) (1 without a clipping norm),
with the weights
  "examples" public:  w_k = n_k / sum_j n_j, public (Flower's FedAvg weighting);
  "examples" secret:  w_k = n_k / N, N = sum_j n_j, by one reciprocal of N (n_k never opened);
  "uniform":          w_k = 1 / K for the round's planned number of clients K (DP-FedAvg's
                      fixed denominator, McMahan et al. 2018: one client moves A by at most C'/K),
  "capped":           w_k = min(n_k, cap) / (cap D), n_k public or secret (clamped in MPC), D the
                      public expected capped weight of a round, q W (McMahan et al.'s fixed-
                      denominator estimator; default K): one client moves A by at most C'/D,
and z ~ N_Z(0, (sigma C')^2) in ring units from protocols.noise (no party knows it), C' the bound
on one client's term of the noised sum (`sensitivity`; capped terms carry min(n_k, cap) / 2^g,
2^g the power of two at or above cap, at most r = cap / 2^g, so C' = sensitivity(C, d, f, r)).
Reveals nothing: the caller hands each party's share of A to the Flower server, which sums.

Contract: values with |u| < 2^(62 - f) (updates.seal_update refuses larger ones); with a
clipping norm each value is first clamped to [-C, C], so every norm is within the clip
factor's range and no update escapes the clip (secret n_k are clamped to [1, MAX_COUNT]).
Accuracy: the clip factor's relative error is below 1e-4 (reciprocal.inv_sqrt), the
reciprocal of N's below 1e-4 for N in [1, K MAX_COUNT]; each truncation adds at most 2^-f
per value.
"""
import math
from fractions import Fraction

import torch

from mpcft.kernels.discrete_noise import variance_fraction
from mpcft.privacy.dp_sgd import CLIP_SLACK, clip_factors
from mpcft.protocols import beaver, comparison, fixed, noise, reciprocal
from mpcft.protocols.truncation import truncate

from .updates import MAX_COUNT

WEIGHTINGS = ("examples", "uniform", "capped")
WEIGHT_BITS = 8              # public weights carry f + 8 fractional bits: |A| < 2^(62 - 2f - 8) = 2^22


def sensitivity(clipping_norm: float, numel: int, frac_bits: int, max_weight: float = 1.0) -> float:
    """C': a bound on how far one client moves the noised sum as computed, ||w c_k U_k|| for a
    weight w <= max_weight (the clip factor's slack) plus the rounding of each of the numel
    values by 2^-f in either sum; the noise is calibrated to it."""
    return max_weight * clipping_norm * (1 + CLIP_SLACK) + 2 * math.sqrt(numel) * 2.0 ** -frac_bits


def noise_variance(noise_multiplier: float, clipping_norm: float, numel: int, frac_bits: int,
                   max_weight: float = 1.0) -> Fraction:
    """Variance in ring units^2 of the noise z added to the sum, (sigma C' 2^f)^2, as the
    exact sampler takes it (ValueError outside its range)."""
    return variance_fraction((noise_multiplier * sensitivity(clipping_norm, numel, frac_bits, max_weight)
                              * 2.0 ** frac_bits) ** 2)


def aggregate_sensitivity(clipping_norm: float, numel: int, frac_bits: int, denominator: float,
                          weight_cap: int | None = None) -> float:
    """How far one client moves the noiseless aggregate A: C' / K (uniform, denominator K) or
    C'(r) / (r D) (capped, denominator D); the noise's deviation in A is sigma times this."""
    largest = capped_scale(weight_cap)[1] if weight_cap else 1.0
    return sensitivity(clipping_norm, numel, frac_bits, largest) / (largest * denominator)


def capped_scale(weight_cap: int) -> tuple[int, float]:
    """(g, r): capped terms are weighted min(n_k, cap) / 2^g, g = ceil(log2 cap), so the
    weighted sum needs one truncation; the largest weight is r = cap / 2^g, in (1/2, 1]."""
    shift = (weight_cap - 1).bit_length()
    return shift, weight_cap / 2.0 ** shift


def check_capped(weight_cap, clipping_norm, clients: int, frac_bits: int) -> None:
    """ValueError (one line) unless capped weights can be computed: an integer cap in
    [1, MAX_COUNT], a clipping norm, and the weighted sum within the ring's contract."""
    if isinstance(weight_cap, bool) or not isinstance(weight_cap, int) or not 1 <= weight_cap <= MAX_COUNT:
        raise ValueError(f"the weight cap must be an integer in [1, {MAX_COUNT}], got {weight_cap!r}")
    if not clipping_norm:
        raise ValueError("capped weights need a clipping norm")
    if clients * weight_cap * clipping_norm * 2 >= 2.0 ** (62 - 2 * frac_bits):
        raise ValueError(f"{clients} clients x weight cap {weight_cap} x clipping norm {clipping_norm:g} is "
                         f"beyond the fixed point's range (2^{61 - 2 * frac_bits}): lower the cap")


def secure_fedavg(ctx, updates: torch.Tensor, *, counts: list[int] | None = None,
                  weighting: str = "examples", planned_clients: int | None = None,
                  clipping_norm: float | None = None, noise_multiplier: float = 0.0,
                  noise_source: str = "dealer", weight_cap: int | None = None,
                  expected_weight: float | None = None) -> torch.Tensor:
    """This party's shares [d] of A (see the module docstring).

    updates: shares [K, d] (fixed point), or [K, d + 1] with the integer n_k in the last column
    when the weights are secret (counts None, weighting "examples" or "capped"). counts: the
    public n_k. planned_clients: K of the uniform weighting (default: the clients present).
    weight_cap, expected_weight: cap and D of the capped weighting (D default: planned_clients).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if noise_multiplier and (weighting == "examples" or not clipping_norm):
        raise ValueError("noise needs a clipping norm and uniform weights or capped ones (the sensitivity C'/K "
                         "or C'/D)")
    if weighting == "capped":
        check_capped(weight_cap, clipping_norm, updates.shape[0], ctx.frac_bits)
        if expected_weight is not None and not expected_weight > 0:
            raise ValueError(f"the expected weight of a round must be > 0, got {expected_weight!r}")
    f = ctx.frac_bits
    secret = weighting in ("examples", "capped") and counts is None
    values = updates[:, :-1] if secret else updates
    clients, numel = values.shape
    factor = None
    if clipping_norm:
        # each value clamped to [-C, C] first (exact for |u| < 2^(62 - f)): an update with a value
        # beyond C has a norm beyond C and is clipped anyway, and then every norm is at most
        # C sqrt(d), within clip_factors' range, so no update can wrap the norm and escape the clip
        values = comparison.clamp(ctx, values, -clipping_norm, clipping_norm)
        factor = clip_factors(ctx, values, clipping_norm, max_norm=clipping_norm * math.sqrt(numel))  # [K]
    if weighting == "capped":
        return _capped_fedavg(ctx, updates, values, factor, counts, weight_cap, clipping_norm, noise_multiplier,
                              noise_source, expected_weight or planned_clients or clients)
    if secret:
        # n_k (scale 1: the bounds read as fixed point are 2^-f and MAX_COUNT 2^-f) clamped to
        # [1, MAX_COUNT], so the reciprocal's range holds whatever a client shared
        n = comparison.clamp(ctx, updates[:, -1], 2.0 ** -f, MAX_COUNT * 2.0 ** -f)
        weight = n if factor is None else beaver.mul(ctx, n, factor)  # n_k c_k: scale 1 or f
        total = beaver.matmul(ctx, weight.reshape(1, clients), values).reshape(numel)
        if factor is not None:
            total = truncate(ctx, total, f)                          # sum_k n_k c_k U_k, scale f
        # N read as a fixed-point value is N 2^-f; its reciprocal 2^f / N has full precision
        inverse = reciprocal.reciprocal(ctx, n.sum().reshape(1), lo=2.0 ** -f, hi=clients * MAX_COUNT * 2.0 ** -f,
                                        bits=min(62, f + 26))
        return truncate(ctx, beaver.mul(ctx, total, inverse), 2 * f)
    if weighting == "uniform":
        planned = planned_clients or clients
        weights = torch.full((clients,), 1.0 / planned, dtype=torch.float64)
    else:
        if counts is None or len(counts) != clients:
            raise ValueError("public weights need one count per update")
        weights = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    if factor is None:
        # sum_k w_k U_k with the weights encoded at f + 8 bits, summed locally, truncated once
        encoded = torch.round(weights * 2.0 ** (f + WEIGHT_BITS)).to(torch.int64).to(values.device)
        out = truncate(ctx, (values * encoded[:, None]).sum(0), f + WEIGHT_BITS)
    else:
        # sum_k c_k U_k (scale f), plus noise of the sum, then the public 1/K (uniform) or the
        # weights (examples, no noise) folded into the clip factors
        if weighting == "uniform":
            out = truncate(ctx, beaver.matmul(ctx, factor.reshape(1, clients), values), f).reshape(numel)
        else:
            weight = fixed.mul_public(ctx, factor, weights.to(factor.device), extra_bits=8)
            out = truncate(ctx, beaver.matmul(ctx, weight.reshape(1, clients), values), f).reshape(numel)
        if noise_multiplier:
            out = out + noise.gaussian_noise(ctx, (numel,), noise_variance(noise_multiplier, clipping_norm,
                                                                           numel, f), noise_source)
        if weighting == "uniform":
            out = fixed.mul_public(ctx, out, 1.0 / (planned_clients or clients), extra_bits=8)
    return out


def _capped_fedavg(ctx, updates, values, factor, counts, weight_cap, clipping_norm, noise_multiplier,
                   noise_source, expected_weight) -> torch.Tensor:
    """A of the capped weighting: sum_k (m_k / 2^g) c_k U_k, m_k = min(n_k, cap) exact integers
    (clamped in MPC when secret), one truncation by f + g, plus noise for the largest weight
    r = cap / 2^g, times the public 1 / (r D)."""
    f = ctx.frac_bits
    clients, numel = values.shape
    shift, largest = capped_scale(weight_cap)
    if counts is None:       # n_k (scale 1) clamped to [1, cap]: the bounds read as fixed point
        capped = comparison.clamp(ctx, updates[:, -1], 2.0 ** -f, weight_cap * 2.0 ** -f)
        weight = beaver.mul(ctx, capped, factor)                                  # m_k c_k, scale f
    else:
        if len(counts) != clients:
            raise ValueError("public weights need one count per update")
        weight = factor * torch.tensor([min(n, weight_cap) for n in counts], dtype=torch.int64,
                                       device=factor.device)
    out = truncate(ctx, beaver.matmul(ctx, weight.reshape(1, clients), values), f + shift).reshape(numel)
    if noise_multiplier:
        out = out + noise.gaussian_noise(ctx, (numel,), noise_variance(noise_multiplier, clipping_norm, numel, f,
                                                                       largest), noise_source)
    denominator = largest * expected_weight
    return fixed.mul_public(ctx, out, 1.0 / denominator, extra_bits=8 + max(0, math.ceil(math.log2(denominator))))
