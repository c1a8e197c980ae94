"""DP-SGD on shares: per-example clipping, noise no party knows, then the wrapped optimizer.

As Opacus's DPOptimizer (Abadi et al. 2016), with every value secret-shared and nothing opened:
  g_i   per-example gradients of all trained parameters (Parameter.grad_sample), loss scale s
  w_i = min(1, C / ||g_i||)            ||g_i||^2 by Beaver squares, 1/sqrt by reciprocal.inv_sqrt
  g   = (sum_i w_i g_i + z) / B_exp,   z ~ N_Z(0, (sigma C')^2) from protocols.noise (ring units)
then the wrapped SGD/AdamW step on g. B_exp = q N is the expected batch size of Poisson
sampling with rate q; the batch size of each step is public among the parties.

Fixed point: the squared norms are taken of g_i / 2^k, k chosen so that the norm's rounding
error is below 2^-NORM_PRECISION_BITS of the clip threshold; norms up to `norm_range` times C
(reported, ~2^19 / sqrt(N) for N trained parameters) are exact, larger ones wrap the ring and
are outside the contract. The noise is calibrated to C' = C (1 + 2^-10) + 2 sqrt(N) u, which
bounds a clipped example's computed contribution (inv_sqrt's relative error 1e-4, the norm's
rounding) and the summed gradient's rounding u: the guarantee holds for the computed values,
not just for exact arithmetic.
"""
import math

import torch

from mpcft.kernels.discrete_noise import variance_fraction
from mpcft.protocols import beaver, comparison, fixed, noise, reciprocal
from mpcft.protocols.truncation import truncate
from mpcft.tensor import SharedTensor

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
    """

    def __init__(self, optimizer, *, noise_multiplier: float, max_grad_norm: float, expected_batch_size: float,
                 loss_scale: int = 1, noise_source: str = "dealer", colluders: int | None = None):
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
        f, out_scale = self.ctx.frac_bits, optimizer.grad_scale
        rounding = 2.0 ** -f * self.expected_batch_size / out_scale     # u, in per-example gradient units
        self.sensitivity = self.max_grad_norm * (1 + CLIP_SLACK) + 2 * math.sqrt(self.numel) * rounding
        self.noise_variance = (self.noise_multiplier * self.sensitivity * out_scale * 2.0 ** f
                               / self.expected_batch_size) ** 2          # ring units^2
        if self.noise_multiplier:
            variance_fraction(self.noise_variance)       # ValueError beyond the exact sampler's range

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

    def per_example_gradients(self) -> torch.Tensor | None:
        """Shares [B, N] of the per-example gradients of all parameters, flattened; None for
        an empty batch."""
        samples = [p.grad_sample for p in self.params]
        if all(s is None for s in samples):
            return None
        if any(s is None for s in samples):
            raise RuntimeError("some trained parameters have no per-example gradient: "
                               "call model.track_per_example() before the forward pass")
        batch = samples[0].shape[0]
        return torch.cat([s.share.reshape(batch, -1) for s in samples], dim=1)

    def clipped_sum(self) -> torch.Tensor:
        """Shares [N] of S_out / B_exp * sum_i min(1, C / ||g_i||) g_i (value of the loss gradients)."""
        ctx, f = self.ctx, self.ctx.frac_bits
        grads = self.per_example_gradients()
        if grads is None:
            return torch.zeros(self.numel, dtype=torch.int64, device=ctx.device)
        batch = grads.shape[0]
        factor = clip_factors(ctx, grads, self.max_grad_norm * self.loss_scale / batch)
        # weight_i = rho factor_i, rho = S_out B / (s B_exp), kept with f + e fractional bits
        rho = self.optimizer.grad_scale * batch / (self.loss_scale * self.expected_batch_size)
        e = max(0, math.ceil(-math.log2(rho)))
        weight = fixed.mul_public(ctx, factor, rho * 2.0 ** e, extra_bits=8)
        return truncate(ctx, beaver.matmul(ctx, weight.reshape(1, batch), grads), f + e).reshape(-1)

    def norm_range(self, batch: int) -> float:
        """Per-example gradient norms up to this many times C are within the contract."""
        threshold = self.max_grad_norm * self.loss_scale / batch
        shift = norm_shift(threshold, self.numel, self.ctx.frac_bits)
        return 2.0 ** (31 - self.ctx.frac_bits + shift) / threshold


def clip_factors(ctx, rows: torch.Tensor, threshold: float, max_norm: float | None = None) -> torch.Tensor:
    """Shares [B] of min(1, threshold / ||row_i||) for shares `rows` [B, N], nothing opened.

    ||row_i||^2 by Beaver squares of row_i / 2^k (k = norm_shift, or more so that norms up to
    `max_norm` fit), 1/sqrt by reciprocal.inv_sqrt (relative error ~1e-4), the minimum by a
    comparison. Norms up to 2^(31 - f + k) (DPOptimizer.norm_range) are within the contract.
    Reveals nothing."""
    f = ctx.frac_bits
    batch, numel = rows.shape
    shift = norm_shift(threshold, numel, f)
    if max_norm is not None:
        shift = max(shift, math.ceil(math.log2(max_norm)) - 30 + f)
    low = rows if shift == 0 else truncate(ctx, rows, shift)        # row_i / 2^k
    scaled = threshold / 2.0 ** shift                               # the threshold in units of row_i / 2^k
    # squared norms times 2^j, j even, bring the threshold's square near [1, 4): full precision
    j = min(max(0, 2 * math.ceil(-math.log2(scaled))), 2 * ((f - 1) // 2))
    squares = truncate(ctx, beaver.square(ctx, low).sum(-1), f - j) + ctx.public(_LOW, (batch,))
    hi = 2.0 ** (62 - 2 * f + j) + _LOW
    bits = min(62, f + math.ceil(math.log2(hi)) + 2)
    ratio = reciprocal.inv_sqrt(ctx, squares, _LOW, hi, bits=bits,
                                multiplier=scaled * 2.0 ** (j / 2))     # threshold / ||row_i||
    below_one, _ = comparison.select_negative(ctx, ratio - ctx.public(1.0, ratio.shape), bits)
    return ctx.public(1.0, ratio.shape) + below_one                    # min(1, threshold / ||row_i||)


def norm_shift(threshold: float, numel: int, frac_bits: int) -> int:
    """k >= 0 with sqrt(numel) 2^(k - f) (the rounding of ||g / 2^k|| 2^k) below
    2^-NORM_PRECISION_BITS * threshold: the most headroom for that precision."""
    slack = math.log2(threshold) - NORM_PRECISION_BITS - 0.5 * math.log2(max(numel, 1)) + frac_bits
    return max(0, math.floor(slack))
