"""Per-example gradients by Function type, for DP-SGD's per-example clipping.

A parameter with `grad_sample_enabled` (Module.track_per_example) gets `grad_sample`, its
gradient for each example of the batch [batch, *shape], beside `grad`, their sum. The
sampler registered for the Function that used the parameter computes them from what the
forward saved and the output gradient, in place of the batch gradient (as Opacus registers
compute_linear_grad_sample for nn.Linear). Shares in, shares out: nothing is revealed.

A Linear weight with `grad_sample_factors` set (by a consumer that can use them, e.g. DP-SGD's
ghost clipping) gets its factors instead, LinearFactors: G_b = g_b^T x_b is left unformed, so
its consumer chooses per layer between forming it and the norm-only ("ghost") route.
"""
import torch

from mpcft.autograd import register_grad_sampler
from mpcft.protocols import fixed

from .functional import LayerNormFunction, LinearFunction, _per_example


class LinearFactors:
    """Per-example gradients of a Linear weight as factors: G_b = g_b^T x_b for shares x [B, T, d]
    (the layer's inputs) and g [B, T, p] (its output gradients). Uses of one layer join along
    the positions: g_b^T x_b + g'_b^T x'_b = [g_b; g'_b]^T [x_b; x'_b]."""

    def __init__(self, x: torch.Tensor, grad: torch.Tensor):
        self.x, self.grad = x, grad

    @property
    def shape(self) -> tuple:
        """(B, p, d), the shape of the per-example gradients they stand for."""
        return (self.x.shape[0], self.grad.shape[-1], self.x.shape[-1])

    @property
    def positions(self) -> int:
        return self.x.shape[1]

    def join(self, other: "LinearFactors") -> "LinearFactors":
        return LinearFactors(torch.cat([self.x, other.x], 1), torch.cat([self.grad, other.grad], 1))

    def materialise(self, ctx) -> torch.Tensor:
        """Shares [B, p, d] of G_b = g_b^T x_b: one batched Beaver product, one truncation."""
        return fixed.matmul(ctx, self.grad.mT.contiguous(), self.x)


@register_grad_sampler(LinearFunction)
def linear_grad_sample(fctx, grad) -> dict:
    """dW_b = g_b^T x_b (one batched Beaver product, or its LinearFactors if the weight asks
    for them), db_b = sum over positions of g_b."""
    samples = {}
    if fctx.needs_input_grad[1]:
        g3 = grad.reshape(grad.shape[0], -1, grad.shape[-1])
        x3 = fctx.x.reshape(fctx.x.shape[0], -1, fctx.x.shape[-1])
        factors = LinearFactors(x3.contiguous(), g3.contiguous())
        samples[1] = factors if getattr(fctx.weight, "grad_sample_factors", False) else factors.materialise(fctx.mpc)
    if fctx.needs_input_grad[2]:
        samples[2] = _per_example(grad)
    return samples


@register_grad_sampler(LayerNormFunction)
def layer_norm_grad_sample(fctx, grad) -> dict:
    """dgamma_b = sum over positions of g_b xhat_b, dbeta_b = sum over positions of g_b."""
    samples = {}
    if fctx.needs_input_grad[1]:
        samples[1] = _per_example(fixed.mul(fctx.mpc, grad, fctx.xhat))
    if fctx.needs_input_grad[2]:
        samples[2] = _per_example(grad)
    return samples
