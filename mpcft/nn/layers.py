"""Linear, LoRA, LayerNorm and GELU layers on shares, each with an explicit backward pass.

Inputs are int64 share tensors at the context's fixed-point scale, shaped [batch, ..., features].
forward() caches what backward() needs; backward(grad_out) accumulates the parameters'
gradient shares and returns the input gradient (or None when `needs_input_grad` is False,
for the lowest trained layer). Public (frozen) weights multiply locally, with a truncation
and no triple; secret weights use Beaver products.
"""
import math

import torch

from mpcft.kernels import ring_matmul
from mpcft.protocols import activations, beaver, fixed, layernorm
from mpcft.protocols.truncation import truncate

from .module import Module, Parameter


def _matmul(ctx, x: torch.Tensor, w: Parameter, transpose: bool) -> torch.Tensor:
    """x @ w^T (transpose) or x @ w, truncated; local when w is public."""
    weight = w.data.mT if transpose else w.data
    if w.trainable:
        return truncate(ctx, beaver.matmul(ctx, x, weight))
    return truncate(ctx, ring_matmul(x.contiguous(), weight.contiguous()))


def _per_example_weight_grad(ctx, grad: torch.Tensor, x: torch.Tensor):
    """Shares of g_b^T x_b for every example b ([batch, out, in]) and of their sum."""
    g3 = grad.reshape(grad.shape[0], -1, grad.shape[-1])
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    per_example = truncate(ctx, beaver.matmul(ctx, g3.mT.contiguous(), x3))
    return per_example, per_example.sum(0)


class Linear(Module):
    """y = x W^T + b with W [out, in] public (frozen) or secret (trained)."""

    def __init__(self, ctx, weight: torch.Tensor, bias: torch.Tensor | None, trainable: bool,
                 needs_input_grad: bool = True):
        super().__init__(ctx)
        self.weight = Parameter(ctx, weight, trainable)
        self.bias = Parameter(ctx, bias, trainable) if bias is not None else None
        self.needs_input_grad = needs_input_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._x = x
        y = _matmul(self.ctx, x, self.weight, transpose=True)
        if self.bias is not None:
            y = y + (self.bias.data if self.bias.trainable or self.ctx.rank == 0
                     else torch.zeros_like(self.bias.data))
        return y

    def backward(self, grad: torch.Tensor):
        ctx, x = self.ctx, self._x
        if self.weight.trainable:
            if self.per_example:
                self.weight.grad_sample, total = _per_example_weight_grad(ctx, grad, x)
            else:
                g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
                total = truncate(ctx, beaver.matmul(ctx, g2.mT.contiguous(), x2))
            self.weight.accumulate(total)
        if self.bias is not None and self.bias.trainable:
            if self.per_example:
                self.bias.grad_sample = grad.reshape(grad.shape[0], -1, grad.shape[-1]).sum(1)
            self.bias.accumulate(grad.reshape(-1, grad.shape[-1]).sum(0))
        if not self.needs_input_grad:
            return None
        return _matmul(ctx, grad, self.weight, transpose=False)


class LoRALinear(Module):
    """y = x W^T + b + (alpha / r) (x A^T) B^T: W, b frozen and public; A [r, in], B [out, r] trained.

    A starts from a public seeded Gaussian (std 1/sqrt(in)), B from zero, as in LoRA; both
    become secret with the first update.
    """

    def __init__(self, ctx, weight, bias, rank: int, alpha: float, seed: int = 0,
                 needs_input_grad: bool = True):
        super().__init__(ctx)
        out_features, in_features = weight.shape
        self.base = Linear(ctx, weight, bias, trainable=False, needs_input_grad=needs_input_grad)
        gen = torch.Generator().manual_seed(seed)  # public initialisation, agreed by all parties
        a = torch.randn(rank, in_features, generator=gen, dtype=torch.float64) / math.sqrt(in_features)  # noqa: csprng (public init)
        self.lora_a = Linear(ctx, a, None, trainable=True, needs_input_grad=needs_input_grad)
        self.lora_b = Linear(ctx, torch.zeros(out_features, rank, dtype=torch.float64), None, trainable=True)
        self.scaling = alpha / rank
        self.needs_input_grad = needs_input_grad

    def forward(self, x):
        low = fixed.mul_public(self.ctx, self.lora_b(self.lora_a(x)), self.scaling)
        return self.base(x) + low

    def backward(self, grad):
        g_low = fixed.mul_public(self.ctx, grad, self.scaling)
        g_a_out = self.lora_b.backward(g_low)
        g_x = self.lora_a.backward(g_a_out)
        g_base = self.base.backward(grad)
        return None if not self.needs_input_grad else g_base + g_x


class LayerNorm(Module):
    """y = xhat * gamma + beta over the last dim; gamma, beta public (frozen) or secret."""

    def __init__(self, ctx, gamma, beta, eps: float, trainable: bool):
        super().__init__(ctx)
        self.gamma = Parameter(ctx, gamma, trainable)
        self.beta = Parameter(ctx, beta, trainable)
        self.eps = eps

    def forward(self, x):
        ctx = self.ctx
        self._xhat, self._rstd = layernorm.layernorm(ctx, x, self.eps)
        if self.gamma.trainable:
            y = fixed.mul(ctx, self._xhat, self.gamma.data)
            return y + self.beta.data
        y = truncate(ctx, self._xhat * self.gamma.data)
        return y + (self.beta.data if ctx.rank == 0 else 0)

    def backward(self, grad):
        ctx = self.ctx
        if self.gamma.trainable:
            per_example = lambda t: t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)   # [batch, d]
            g_gamma, g_beta = per_example(fixed.mul(ctx, grad, self._xhat)), per_example(grad)
            if self.per_example:
                self.gamma.grad_sample, self.beta.grad_sample = g_gamma, g_beta
            self.gamma.accumulate(g_gamma.sum(0))
            self.beta.accumulate(g_beta.sum(0))
            g_xhat = fixed.mul(ctx, grad, self.gamma.data)
        else:
            g_xhat = truncate(ctx, grad * self.gamma.data)
        return layernorm.layernorm_backward(ctx, g_xhat, self._xhat, self._rstd)


class GELU(Module):
    def forward(self, x):
        y, self._slope = activations.gelu(self.ctx, x, with_grad=True)
        return y

    def backward(self, grad):
        return fixed.mul(self.ctx, grad, self._slope)
