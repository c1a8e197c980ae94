"""Optimizers on secret-shared parameters: SGD with momentum, and AdamW.

Gradients may arrive scaled by a public integer grad_scale S (loss scaling); the optimizers
divide it out in their public coefficients, with log2(S) extra fractional bits so that
nothing of the scaling's precision is lost. All parameters are updated together: their
flattened shares are concatenated, so each step's rounds do not grow with the number of
parameter tensors. Nothing is opened: parameters, moments and updates stay shared.
Each step runs in the session's comm region "<Optimizer>.step" (SGD.step, AdamW.step).
"""
import functools
import math

import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS
from mpcft.protocols import beaver, comparison, fixed, reciprocal
from mpcft.protocols.cost import Cost
from mpcft.protocols.truncation import truncate_cost, truncate_many, truncations_cost


def _step_region(step):
    """Run an optimizer's step in the comm region "<class name>.step"."""
    @functools.wraps(step)
    def wrapper(self):
        with self.ctx.session.comm.region(f"{type(self).__name__}.step"):
            step(self)
    return wrapper


class _Optimizer:
    def __init__(self, parameters, grad_scale: int):
        self.params = [p for p in parameters if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(self).__name__} got no trainable parameters")
        self.ctx = self.params[0].ctx
        self.grad_scale = int(grad_scale)
        self._extra_bits = scale_bits(self.grad_scale)
        self.steps = 0

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _gradients_and_weights(self):
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise RuntimeError(f"parameters {missing} have no gradient: call backward() first")
        return self._flat([p.grad.share for p in self.params]), self._flat([p.data for p in self.params])

    def _write(self, weights: torch.Tensor) -> None:
        start = 0
        for p in self.params:
            p.data = weights[start:start + p.data.numel()].reshape(p.shape)
            start += p.data.numel()
        self.steps += 1

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = p.grad_sample = None

    _buffers: tuple = ()     # names of the shared state tensors (None before the first step)

    def state_dict(self) -> dict:
        """{"steps": t, buffer name: this party's shares (or None)}: what a checkpoint keeps."""
        return {"steps": self.steps, **{name: getattr(self, name) for name in self._buffers}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (checked: the same buffers, each int64 of the
        flattened parameters' size, or None)."""
        numel = sum(p.data.numel() for p in self.params)
        if set(state) != {"steps", *self._buffers} or not isinstance(state["steps"], int):
            raise ValueError(f"{type(self).__name__} state holds {sorted(state)}, expected steps and "
                             f"{list(self._buffers)}")
        for name in self._buffers:
            value = state[name]
            if value is not None and (value.dtype != torch.int64 or tuple(value.shape) != (numel,)):
                raise ValueError(f"{type(self).__name__} {name}: expected int64 of shape ({numel},), got "
                                 f"{value.dtype} {tuple(value.shape)}")
            setattr(self, name, None if value is None else value.to(self.ctx.device))
        self.steps = state["steps"]


class SGD(_Optimizer):
    """v <- mu v + g, w <- w - lr v, with g including weight decay wd w (as torch.optim.SGD).

    One round a step: v's new part mu v + wd S w and the whole update (lr / S)(mu v + g + wd S w),
    both linear in the old v, g and w, are truncated together (the update from the exact sum,
    not from the rounded v). Cost per step over all N parameters: sgd_cost."""
    _buffers = ("velocity",)

    def __init__(self, parameters, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 grad_scale: int = 1):
        super().__init__(parameters, grad_scale)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = None

    @_step_region
    def step(self) -> None:
        ctx = self.ctx
        grad, weights = self._gradients_and_weights()
        carried = []                                          # (shares, coefficient) of v's new part
        if self.weight_decay:
            carried.append((weights, self.weight_decay * self.grad_scale))
        if self.momentum and self.velocity is not None:
            carried.append((self.velocity, self.momentum))
        rate = self.lr / self.grad_scale
        terms, coeffs = [grad] + [t for t, _ in carried], [rate] + [rate * c for _, c in carried]
        parts = [fixed.combination(ctx, terms, coeffs, self._extra_bits)]
        if carried:
            parts.append(fixed.combination(ctx, [t for t, _ in carried], [c for _, c in carried]))
        truncated = truncate_many(ctx, parts)
        self.velocity = grad + truncated[1] if carried else grad
        self._write(weights - truncated[0])


class AdamW(_Optimizer):
    """AdamW (decoupled weight decay) on shares, with the bias-corrected moments kept directly:

        g <- clamp(g, -G, G)                               coordinate-wise clipping (range contract)
        m <- a_t m + (1 - a_t) g,    a_t = b1 (1 - b1^(t-1)) / (1 - b1^t)       (Adam's m_hat)
        v <- c_t v + (1 - c_t) g^2,  c_t = b2 (1 - b2^(t-1)) / (1 - b2^t)       (Adam's v_hat)
        w <- w - lr (m / sqrt(v + eps^2) + wd w)

    The same as torch.optim.AdamW except that eps sits inside the square root and that
    gradients are clipped to [-G, G] (mpcft.finetune.plaintext.AdamW is this variant in torch).
    Fixed point: v is held scaled by K = 2^(18 - 2 log2 G) so that inv_sqrt's domain
    [K eps^2, K (G^2 + eps^2)] lies in [2^-12, 2^18]: eps must be at least G 2^-15. The
    clipping keeps g^2 from overflowing whatever the gradients; since |m| <= sqrt(v) (m and v
    average the same g with the same weights), the update is at most lr per coordinate.
    Cost per step for N parameters: adamw_cost(n, N, ...); the inverse square root dominates
    (one comparison per factor of 4 in v's range), so AdamW suits head and LoRA training,
    where N is small; for whole layers SGD is much cheaper.
    """
    _buffers = ("m", "v")

    def __init__(self, parameters, lr: float, betas=(0.9, 0.999), eps: float = 1e-4,
                 weight_decay: float = 0.0, clip: float = 1.0, grad_scale: int = 1):
        super().__init__(parameters, grad_scale)
        limit = 2.0 ** (31 - self.ctx.frac_bits - self._extra_bits)   # (S G 2^f)^2 < 2^62
        if not 0 < clip <= limit:
            raise ValueError(f"AdamW clip must be in (0, {limit}] (fixed point, grad_scale {grad_scale}), got {clip}")
        self.lr, self.betas, self.eps, self.weight_decay, self.clip = lr, betas, eps, weight_decay, clip
        self.v_scale_bits = adamw_v_scale_bits(clip)
        self.lo, self.hi = adamw_range(clip, eps)
        self.m = self.v = None

    @_step_region
    def step(self) -> None:
        ctx, f, S = self.ctx, self.ctx.frac_bits, self.grad_scale
        grad, weights = self._gradients_and_weights()
        g = comparison.clamp(ctx, grad, -self.clip * S, self.clip * S)             # value S g
        t = self.steps + 1
        b1, b2 = self.betas
        a = b1 * (1 - b1 ** (t - 1)) / (1 - b1 ** t)
        c = b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t)
        square_shift = adamw_square_shift(f, self._extra_bits, self.clip)
        g_square = beaver.square(ctx, g)
        m_num = g * ctx.fp.encode(torch.tensor(1 - a)) + (self.m * ctx.fp.encode(torch.tensor(a)) if a else 0)
        self.m, g_square = truncate_many(ctx, [(m_num, f), (g_square, square_shift)])
        self.v = fixed.combine(ctx, [g_square] + ([self.v] if c else []), [1 - c] + ([c] if c else []))
        u = self.v + ctx.public(self.eps ** 2 * 2.0 ** self.v_scale_bits)
        # r = 2^10 / sqrt(K (v + eps^2)); m r = S 2^10 m / (sqrt(K) sqrt(v + eps^2))
        r = reciprocal.inv_sqrt(ctx, u, self.lo, self.hi, multiplier=2.0 ** 10)
        direction = fixed.mul(ctx, self.m, r)
        factor = self.lr * 2.0 ** (self.v_scale_bits / 2 - 10) / S
        extra = 10 + self._extra_bits
        update = fixed.combine(ctx, [direction, weights], [factor, self.lr * self.weight_decay], extra_bits=extra)
        self._write(weights - update)


def scale_bits(grad_scale: int) -> int:
    """The extra fractional bits that gradients scaled by grad_scale S carry: floor(log2 S)."""
    return max(0, int(grad_scale).bit_length() - 1)


def adamw_v_scale_bits(clip: float) -> int:
    return 18 - 2 * math.ceil(math.log2(clip))


def adamw_square_shift(frac_bits: int, extra_bits: int, clip: float) -> int:
    """The truncation of g^2 into v's scale K: (S g 2^f)^2 carries 2f + 2 log2 S fractional
    bits, K adds adamw_v_scale_bits(clip) more."""
    return frac_bits + 2 * extra_bits - adamw_v_scale_bits(clip)


def adamw_range(clip: float, eps: float) -> tuple[float, float]:
    """inv_sqrt's domain [K eps^2, K (G^2 + eps^2)] for v scaled by K; checks eps >= G 2^-15."""
    k = 2.0 ** adamw_v_scale_bits(clip)
    lo, hi = k * eps ** 2, k * (clip ** 2 + eps ** 2)
    if lo < 2.0 ** -12:
        raise ValueError(f"AdamW eps={eps} is too small for clip={clip} in fixed point: "
                         f"use eps >= {clip * 2.0 ** -15:.2e}")
    return lo, hi


def sgd_cost(n: int, numel: int, momentum: bool = True, weight_decay: bool = False, grad_scale: int = 1,
             frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    """From the second step on (the first carries no momentum): one round."""
    carried = [(numel, frac_bits)] if momentum or weight_decay else []
    return truncations_cost(n, [(numel, frac_bits + scale_bits(grad_scale))] + carried)


def adamw_cost(n: int, numel: int, clip: float = 1.0, eps: float = 1e-4, grad_scale: int = 1,
               frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    lo, hi = adamw_range(clip, eps)
    f, extra = frac_bits, scale_bits(grad_scale)
    return (comparison.clamp_cost(n, numel) + beaver.square_cost(n, numel)
            + truncations_cost(n, [(numel, f), (numel, adamw_square_shift(f, extra, clip))])
            + truncate_cost(n, numel, f) + reciprocal.inv_sqrt_cost(n, numel, lo, hi, multiplier=2.0 ** 10, frac_bits=f)
            + fixed.mul_cost(n, numel, numel, frac_bits=f) + truncate_cost(n, numel, f + 10 + extra))