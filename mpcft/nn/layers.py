"""Linear, LoRA, LayerNorm and GELU layers on SharedTensors ([batch, ..., features]).

Each layer's forward is one fused Function of mpcft.nn.functional, so autograd gives the
backward pass. A layer built from a torch module keeps it as `source`: mpcft.nn.peft
writes revealed trained weights back into it.
"""
import math

import torch

from . import functional as F
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b with W [out, in]; public and frozen by default (pretrained weights)."""

    def __init__(self, ctx, weight: torch.Tensor, bias: torch.Tensor | None = None, *, secret: bool = False,
                 requires_grad: bool = False, source=None):
        super().__init__(ctx)
        self.weight = Parameter(ctx, weight, secret=secret, requires_grad=requires_grad)
        self.bias = Parameter(ctx, bias, secret=secret, requires_grad=requires_grad) if bias is not None else None
        self.source = source

    @classmethod
    def from_torch(cls, ctx, dense: torch.nn.Linear, **options) -> "Linear":
        bias = dense.bias.detach().double() if dense.bias is not None else None
        return cls(ctx, dense.weight.detach().double(), bias, source=dense, **options)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def projection(self) -> tuple:
        """(W, b, None): this layer as a part of F.projections."""
        return self.weight, self.bias, None


class LoRALinear(Module):
    """y = base(x) + (alpha / r) (x A^T) B^T around a frozen Linear `base`; A [r, in] and
    B [out, r] trained, A from a public seeded Gaussian (std 1/sqrt(in)), B from zero, as in
    LoRA; both are secret from the start (shared without bytes)."""

    def __init__(self, base: Linear, rank: int, alpha: float, seed: int = 0):
        super().__init__(base.ctx)
        out_features, in_features = base.weight.shape
        self.base = base
        gen = torch.Generator().manual_seed(seed)  # public initialisation, agreed by all parties
        a = torch.randn(rank, in_features, generator=gen, dtype=torch.float64) / math.sqrt(in_features)  # noqa: csprng (public init)
        self.lora_a = Linear(base.ctx, a, secret=True, requires_grad=True)
        self.lora_b = Linear(base.ctx, torch.zeros(out_features, rank, dtype=torch.float64),
                             secret=True, requires_grad=True)
        self.scaling = alpha / rank

    def forward(self, x):
        low = self.lora_b(self.lora_a(x)) * self.scaling
        return self.base(x) + low

    def projection(self) -> tuple:
        """(W, b, (A, B, alpha / r)): this layer as a part of F.projections."""
        return self.base.weight, self.base.bias, (self.lora_a.weight, self.lora_b.weight, self.scaling)


def project(x, layers: list) -> list:
    """[layer(x) for layer in layers] for Linear and LoRALinear layers of one input x, as one
    fused F.projections whose rounds they share (q, k and v with LoRA on two of them: 4 rounds
    forward and 4 backward, where one by one they take 13 and 10). Where a weight takes
    per-example gradients (DP), the layers run one by one, as their grad samplers expect."""
    parts = [layer.projection() for layer in layers]
    weights = [w for weight, bias, lora in parts for w in (weight, bias, *(lora or ())[:2]) if w is not None]
    if any(w.grad_sample_enabled for w in weights):
        return [layer(x) for layer in layers]
    y, start = F.projections(x, parts), 0
    outputs = []
    for weight, _, _ in parts:
        outputs.append(y[..., start:start + weight.shape[0]])
        start += weight.shape[0]
    return outputs


class LayerNorm(Module):
    """y = xhat * gamma + beta over the last dim; gamma, beta public and frozen by default."""

    def __init__(self, ctx, gamma, beta, eps: float, *, secret: bool = False, requires_grad: bool = False,
                 source=None):
        super().__init__(ctx)
        self.gamma = Parameter(ctx, gamma, secret=secret, requires_grad=requires_grad)
        self.beta = Parameter(ctx, beta, secret=secret, requires_grad=requires_grad)
        self.eps = eps
        self.source = source

    @classmethod
    def from_torch(cls, ctx, norm: torch.nn.LayerNorm, **options) -> "LayerNorm":
        return cls(ctx, norm.weight.detach().double(), norm.bias.detach().double(), norm.eps,
                   source=norm, **options)

    def forward(self, x):
        return F.layer_norm(x, self.gamma, self.beta, self.eps)


class GELU(Module):
    def forward(self, x):
        return F.gelu(x)
