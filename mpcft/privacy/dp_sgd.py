"""DP-SGD on shares: per-example clipping, noise no party knows, then the wrapped optimizer.

As Opacus's DPOptimizer (Abadi et al. 2016), with every value secret-shared and nothing opened:
  g_i   per-example gradients of all trained parameters (Parameter.grad_sample), loss scale s
  w_i = min(1, C / ||g_i||)            ||g_i||^2 by Beaver squares, 1/sqrt by reciprocal.inv_sqrt
(a Linear weight's part of ||g_i||^2 and of the sum by ghost clipping, without forming its
per-example gradients, where privacy.ghost's cost formulas say that is cheaper)
  g   = (sum_i w_i g_i + z) / B_exp,   z ~ N_Z(0, (sigma C')^2) from protocols.noise (ring units)
then the wrapped SGD/AdamW step on g. B_exp = q N is the expected batch size of Poisson
sampling with rate q; the batch size of each step is public among the parties.

Fixed point: the squared norms are taken of g_i / 2^k, k chosen so that the norm's rounding
error is below 2^-NORM_PRECISION_BITS of the clip threshold; norms up to `norm_range` times C
(reported, ~2^19 / sqrt(N) for N trained parameters) are exact, larger ones wrap the ring and
are outside the contract. The noise is calibrated to C' = C (1 + 2^-10) + 2 sqrt(N) u, which
bounds a clipped example's computed contribution (inv_sqrt's relative error 1e-4, the norm's
rounding) and the summed gradient's rounding u: the guarantee holds for the computed values,
not just for exact arithmetic. On the ghost route a layer's norm rounding is privacy.ghost's
bound instead, which grows with its Gram matrices: within 2^-NORM_PRECISION_BITS of the
threshold for unit-scale activations (LayerNorm outputs), not for inputs of any size.
"""
import math

import torch

from mpcft.kernels.discrete_noise import variance_fraction
from mpcft.nn.grad_sample import LinearFactors
from mpcft.protocols import beaver, comparison, fixed, noise, reciprocal
from mpcft.protocols.truncation import truncate
from mpcft.tensor import SharedTensor

from . import ghost

NORM_PRECISION_BITS = 12     # the norm's rounding error is below 2^-12 of the clip threshold
CLIP_SLACK = 2.0 ** -10      # relative bound on a clipped contribution's excess over C
_LOW = 2.0 ** -16            # added to squared norms: inv_sqrt's domain starts above 0


class DPOptimizer:
    """Wraps an mpcft optimizer (SGD, AdamW) for DP-SGD, with Opacus's names.

    noise_multiplier sigma and max_grad_norm C as in Opacus; expected_batch_size B_exp = q N;
    loss_scale s: the per-example gradients are s / B times the per-example loss gradients
    (the model's loss is the batch mean, backward(s)), as Opacus's loss_reduction="mean".
    noise_source: "dealer" or "parties" (protocols.noise; colluders t for the latter).
    The wrapped optimizer's grad_scale S_out is the scale of the gradient it is handed.
    ghost_clipping: the parameters' Linear samplers hand their factors (grad_sample_factors)
    and each layer takes the cheaper of ghost clipping and formed gradients (privacy.ghost).
    Off by default: the ghost norm's rounding bound grows with the layer inputs' magnitudes,
    so the noise's calibration covers it only for unit-scale inputs (LayerNorm outputs); the
    formed route's bound holds for any input.
    """

    def __init__(self, optimizer, *, noise_multiplier: float, max_grad_norm: float, expected_batch_size: float,
                 loss_scale: int = 1, noise_source: str = "dealer", colluders: int | None = None,
                 ghost_clipping: bool = False):
        if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not max_grad_norm > 0 or not math.isfinite(max_grad_norm):
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if not expected_batch_size > 0:
            raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}")
        if noise_source not in noise.NOISE_SOURCES:
            raise ValueError(f"noise_source must be one of {noise.NOISE_SOURCES}, got {noise_source!r}")
        self.optimizer, self.params, self.ctx = optimizer, optimizer.params, optimizer.ctx
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.expected_batch_size, self.loss_scale = float(expected_batch_size), int(loss_scale)
        self.noise_source, self.colluders = noise_source, colluders
        self.numel = sum(math.prod(p.shape) for p in self.params)
        for p in self.params:
            p.grad_sample_factors = ghost_clipping
        self.choices = []       # per parameter, at the last step: "ghost" or "formed"
        self.sensitivity, self.noise_variance = noise_calibration(
            self.noise_multiplier, self.max_grad_norm, self.expected_batch_size, self.numel,
            self.ctx.frac_bits, optimizer.grad_scale)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        """Clip, sum, add noise, divide by B_exp; then the wrapped optimizer's step. A parameter
        without grad_sample (an empty batch) contributes noise only."""
        clipped = self.clipped_sum()
        if self.noise_multiplier:
            clipped = clipped + noise.gaussian_noise(self.ctx, clipped.shape, self.noise_variance,
                                                     self.noise_source, self.colluders)
        start = 0
        for p in self.params:
            size = math.prod(p.shape)
            p.grad = SharedTensor(self.ctx, clipped[start:start + size].reshape(p.shape))
            start += size
        self.optimizer.step()

    def clipped_sum(self) -> torch.Tensor:
        """Shares [N] of S_out / B_exp * sum_i min(1, C / ||g_i||) g_i (value of the loss gradients).

        A Linear weight handed as LinearFactors takes the ghost route or is formed, whichever
        ghost.prefer_ghost says is cheaper for its shape (`choices` records it)."""
        ctx, f = self.ctx, self.ctx.frac_bits
        samples = [p.grad_sample for p in self.params]
        if all(s is None for s in samples):
            return torch.zeros(self.numel, dtype=torch.int64, device=ctx.device)
        if any(s is None for s in samples):
            raise RuntimeError("some trained parameters have no per-example gradient: "
                               "call model.track_per_example() before the forward pass")
        batch = samples[0].shape[0]
        threshold = self.max_grad_norm * self.loss_scale / batch
        shift = norm_shift(threshold, self.numel, f)
        # weight_i = rho factor_i, rho = S_out B / (s B_exp), kept with f + e fractional bits
        rho = self.optimizer.grad_scale * batch / (self.loss_scale * self.expected_batch_size)
        e = max(0, math.ceil(-math.log2(rho)))
        self.choices = [self._route(s, threshold, shift, e) for s in samples]
        ghosts = [s for s, c in zip(samples, self.choices) if c == "ghost"]
        formed = [s for s, c in zip(samples, self.choices) if c != "ghost"]
        formed = [s.materialise(ctx) if isinstance(s, LinearFactors) else s.share for s in formed]
        rows = torch.cat([s.reshape(batch, -1) for s in formed], 1) if formed else None
        squares = row_squares(ctx, rows, shift) if formed else 0
        if ghosts:
            squares = squares + ghost.ghost_squared_norms(ctx, ghosts, threshold, shift)
        factor = factors_from_squares(ctx, squares, threshold, shift)
        weight = fixed.mul_public(ctx, factor, rho * 2.0 ** e, extra_bits=8)
        sums = iter(weighted_rows(ctx, weight, rows, e).split(
            [math.prod(p.shape) for p, c in zip(self.params, self.choices) if c != "ghost"]) if formed else ())
        ghost_sums = iter(ghost.ghost_weighted_sums(ctx, ghosts, weight, e) if ghosts else ())
        return torch.cat([(next(ghost_sums) if c == "ghost" else next(sums)).reshape(-1) for c in self.choices])

    def _route(self, sample, threshold: float, shift: int, extra_bits: int) -> str:
        if not isinstance(sample, LinearFactors):
            return "formed"
        batch, out_features, in_features = sample.shape
        ghostly = ghost.prefer_ghost(self.ctx.world_size, batch, sample.positions, in_features, out_features,
                                     threshold, shift, extra_bits, self.ctx.frac_bits)
        return "ghost" if ghostly else "formed"

    def norm_range(self, batch: int) -> float:
        """Per-example gradient norms up to this many times C are within the contract."""
        threshold = self.max_grad_norm * self.loss_scale / batch
        shift = norm_shift(threshold, self.numel, self.ctx.frac_bits)
        return 2.0 ** (31 - self.ctx.frac_bits + shift) / threshold


def noise_calibration(noise_multiplier: float, max_grad_norm: float, expected_batch_size: float, numel: int,
                      frac_bits: int, out_scale: int) -> tuple[float, float]:
    """(sensitivity C', noise variance in ring units^2) of DP-SGD's step on N = numel parameters,
    handed to an optimizer at grad_scale out_scale; ValueError where the variance is beyond the
    exact sampler's range. C' grows with N, so N = 0 gives the least variance."""
    rounding = 2.0 ** -frac_bits * expected_batch_size / out_scale     # u, in per-example gradient units
    sensitivity = max_grad_norm * (1 + CLIP_SLACK) + 2 * math.sqrt(numel) * rounding
    variance = (noise_multiplier * sensitivity * out_scale * 2.0 ** frac_bits / expected_batch_size) ** 2
    if noise_multiplier:
        variance_fraction(variance)
    return sensitivity, variance


def clip_factors(ctx, rows: torch.Tensor, threshold: float, max_norm: float | None = None) -> torch.Tensor:
    """Shares [B] of min(1, threshold / ||row_i||) for shares `rows` [B, N], nothing opened.

    ||row_i||^2 by Beaver squares of row_i / 2^k (k = norm_shift, or more so that norms up to
    `max_norm` fit), 1/sqrt by reciprocal.inv_sqrt (relative error ~1e-4), the minimum by a
    comparison. Norms up to 2^(31 - f + k) (DPOptimizer.norm_range) are within the contract.
    Reveals nothing."""
    f = ctx.frac_bits
    shift = norm_shift(threshold, rows.shape[1], f)
    if max_norm is not None:
        shift = max(shift, math.ceil(math.log2(max_norm)) - 30 + f)
    return factors_from_squares(ctx, row_squares(ctx, rows, shift), threshold, shift)


def row_squares(ctx, rows: torch.Tensor, shift: int) -> torch.Tensor:
    """Shares [B] of ||row_i / 2^shift||^2 at 2f fractional bits: Beaver squares, summed.
    Cost: a truncation of the rows (if shift > 0) and Beaver squares of them."""
    low = rows if shift == 0 else truncate(ctx, rows, shift)        # row_i / 2^k
    return beaver.square(ctx, low).sum(-1)


def factors_from_squares(ctx, squares: torch.Tensor, threshold: float, shift: int) -> torch.Tensor:
    """Shares [B] of min(1, threshold / ||g_i||) from shares of ||g_i / 2^shift||^2 at 2f
    fractional bits: 1/sqrt by reciprocal.inv_sqrt, the minimum by a comparison."""
    f, batch = ctx.frac_bits, squares.shape[0]
    scaled = threshold / 2.0 ** shift                               # the threshold in units of row_i / 2^k
    # squared norms times 2^j, j even, bring the threshold's square near [1, 4): full precision
    j = min(max(0, 2 * math.ceil(-math.log2(scaled))), 2 * ((f - 1) // 2))
    squares = truncate(ctx, squares, f - j) + ctx.public(_LOW, (batch,))
    hi = 2.0 ** (62 - 2 * f + j) + _LOW
    bits = min(62, f + math.ceil(math.log2(hi)) + 2)
    ratio = reciprocal.inv_sqrt(ctx, squares, _LOW, hi, bits=bits,
                                multiplier=scaled * 2.0 ** (j / 2))     # threshold / ||row_i||
    below_one, _ = comparison.select_negative(ctx, ratio - ctx.public(1.0, ratio.shape), bits)
    return ctx.public(1.0, ratio.shape) + below_one                    # min(1, threshold / ||row_i||)


def weighted_rows(ctx, weight: torch.Tensor, rows: torch.Tensor, extra_bits: int) -> torch.Tensor:
    """Shares [N] of sum_i w_i row_i for shares `weight` [B] of w_i 2^extra_bits (f bits):
    one Beaver matmul, one truncation."""
    batch = weight.shape[0]
    product = beaver.matmul(ctx, weight.reshape(1, batch), rows)
    return truncate(ctx, product, ctx.frac_bits + extra_bits).reshape(-1)


def norm_shift(threshold: float, numel: int, frac_bits: int) -> int:
    """k >= 0 with sqrt(numel) 2^(k - f) (the rounding of ||g / 2^k|| 2^k) below
    2^-NORM_PRECISION_BITS * threshold: the most headroom for that precision."""
    slack = math.log2(threshold) - NORM_PRECISION_BITS - 0.5 * math.log2(max(numel, 1)) + frac_bits
    return max(0, math.floor(slack))
