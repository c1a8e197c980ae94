"""Per-example gradients by Function type, for DP-SGD's per-example clipping.

A parameter with `grad_sample_enabled` (Module.track_per_example) gets `grad_sample`, its
gradient for each example of the batch [batch, *shape], beside `grad`, their sum. The
sampler registered for the Function that used the parameter computes them from what the
forward saved and the output gradient, in place of the batch gradient (as Opacus registers
compute_linear_grad_sample for nn.Linear). Shares in, shares out: nothing is revealed.
"""
from mpcft.autograd import register_grad_sampler
from mpcft.protocols import fixed

from .functional import LayerNormFunction, LinearFunction, _per_example


@register_grad_sampler(LinearFunction)
def linear_grad_sample(fctx, grad) -> dict:
    """dW_b = g_b^T x_b (one batched Beaver product), db_b = sum over positions of g_b."""
    samples = {}
    if fctx.needs_input_grad[1]:
        g3 = grad.reshape(grad.shape[0], -1, grad.shape[-1])
        x3 = fctx.x.reshape(fctx.x.shape[0], -1, fctx.x.shape[-1])
        samples[1] = fixed.matmul(fctx.mpc, g3.mT.contiguous(), x3)
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
