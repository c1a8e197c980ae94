"""The fused differentiable operations of mpcft.nn, as Function pairs on shares.

Each Function's forward and backward is a fixed sequence of protocols (protocols/), fused
as the protocols fuse rounds, so that autograd splits no round: a linear layer, the
attention core (scores, softmax, context), GELU with its slope, LayerNorm, masked mean
pooling and cross-entropy. Inputs are SharedTensors at the context's scale f, masks are
SharedTensors of 0/1 at scale 1 (frac_bits 0), weights are nn.Parameters (public: local
products, no triple; secret: Beaver products). Nothing is revealed: outputs and gradients
are shares. Backward computes only what `needs_input_grad` asks for.
"""
import math

from mpcft.kernels import ring_matmul
from mpcft.protocols import activations, beaver, fixed, layernorm, reciprocal, softmax
from mpcft.protocols.truncation import truncate, truncate_many
from mpcft.tensor import Function, SharedTensor


def _fixed_point(x: SharedTensor, name: str) -> None:
    if x.frac_bits != x.ctx.frac_bits:
        raise TypeError(f"{name} takes a fixed-point tensor (scale 2^{x.ctx.frac_bits}), got scale 2^{x.frac_bits}")


def _bits(mask, name: str) -> None:
    if mask is not None and mask.frac_bits != 0:
        raise TypeError(f"{name}: the mask is shares of 0/1 integers (frac_bits 0), got scale 2^{mask.frac_bits}")


def _share(m):
    return None if m is None else m.share


def _product(ctx, x, weight, transpose: bool):
    """x @ w^T (transpose) or x @ w, truncated; local when the weight is public."""
    w = weight.data.mT if transpose else weight.data
    if weight.secret:
        return fixed.matmul(ctx, x, w.contiguous())
    return truncate(ctx, ring_matmul(x.contiguous(), w.contiguous()))


def _truncated(ctx, products) -> list:
    """The ring products (None kept) truncated by f together: one round."""
    present = [p for p in products if p is not None]
    done = iter(truncate_many(ctx, [(p, ctx.frac_bits) for p in present]) if present else ())
    return [None if p is None else next(done) for p in products]


class LinearFunction(Function):
    """y = x W^T + b. Backward: dW = g^T x, db = sum g, dx = g W. A secret weight's product
    keeps its Beaver masks for the backward (beaver.MatmulWithGrads) unless the weight takes
    per-example gradients (grad_sample, from the saved x instead)."""

    @staticmethod
    def forward(fctx, x, weight, bias):
        ctx, needs = fctx.mpc, fctx.needs_input_grad
        fctx.weight, fctx.product = weight, None
        sampled = getattr(weight, "grad_sample_enabled", False)
        if weight.secret and (needs[0] or needs[1] and not sampled):
            fctx.product = beaver.MatmulWithGrads(ctx, x.reshape(-1, x.shape[-1]), weight.data.mT.contiguous(),
                                                  grad_x=needs[0], grad_y=needs[1] and not sampled)
            y = truncate(ctx, fctx.product.out).reshape(*x.shape[:-1], weight.shape[0])
        else:
            y = _product(ctx, x, weight, transpose=True)
        if needs[1] and (sampled or fctx.product is None):
            fctx.x = x                  # the weight's (per-example) gradients come from the input
        return y if bias is None else y + bias.share()

    @staticmethod
    def backward(fctx, grad):
        ctx, needs = fctx.mpc, fctx.needs_input_grad
        gx = gw = gb = None
        g2 = grad.reshape(-1, grad.shape[-1])
        if needs[2]:
            gb = g2.sum(0)
        if fctx.product is not None and (needs[0] or needs[1]):
            gx, gw_t = _truncated(ctx, fctx.product.backward(g2))
            gx = None if gx is None or not needs[0] else gx.reshape(grad.shape[:-1] + (gx.shape[-1],))
            gw = None if gw_t is None or not needs[1] else gw_t.mT.contiguous()
            return gx, gw, gb
        if needs[1]:
            gw = fixed.matmul(ctx, g2.mT.contiguous(), fctx.x.reshape(-1, fctx.x.shape[-1]))
        if needs[0]:
            gx = _product(ctx, grad, fctx.weight, transpose=False)
        return gx, gw, gb


def linear(x: SharedTensor, weight, bias=None) -> SharedTensor:
    """x W^T + b for x [..., in], W [out, in] (nn.Parameter), b [out] or None."""
    _fixed_point(x, "linear")
    return LinearFunction.apply(x, weight, bias)


class AttentionFunction(Function):
    """Multi-head scaled dot-product attention of q, k, v [B, T, H] under a shared 0/1 key mask
    [B, 1, 1, T]: p = softmax(q k^T / sqrt(dh), mask), out = p v (heads merged). Where a
    gradient is needed, both products keep their Beaver masks for the backward
    (beaver.MatmulWithGrads): it opens g_c and g_scores once each, and nothing else."""

    @staticmethod
    def forward(fctx, q, k, v, mask, heads):
        ctx, (need_q, need_k, need_v) = fctx.mpc, fctx.needs_input_grad[:3]
        q, k, v = (_split(t, heads) for t in (q, k, v))
        fctx.scale, fctx.heads = 1 / math.sqrt(q.shape[-1]), heads
        if not (need_q or need_k or need_v):
            scores = fixed.mul_public(ctx, fixed.matmul(ctx, q, k.mT.contiguous()), fctx.scale)
            return _merge(fixed.matmul(ctx, softmax.softmax(ctx, scores, clamp=True, shared_mask=mask), v))
        fctx.qk = beaver.MatmulWithGrads(ctx, q, k.mT.contiguous(), need_q, need_k)
        scores = fixed.mul_public(ctx, truncate(ctx, fctx.qk.out), fctx.scale)
        fctx.p = softmax.softmax(ctx, scores, clamp=True, shared_mask=mask)
        fctx.pv = beaver.MatmulWithGrads(ctx, fctx.p, v, need_q or need_k, need_v)
        return _merge(truncate(ctx, fctx.pv.out))

    @staticmethod
    def backward(fctx, grad):
        ctx, (need_q, need_k) = fctx.mpc, fctx.needs_input_grad[:2]
        g_p, g_v = _truncated(ctx, fctx.pv.backward(_split(grad, fctx.heads)))
        g_q = g_k = None
        if need_q or need_k:
            g_scores = fixed.mul_public(ctx, softmax.softmax_backward(ctx, fctx.p, g_p), fctx.scale)
            g_q, g_k_t = _truncated(ctx, fctx.qk.backward(g_scores))
            g_k = None if g_k_t is None else _merge(g_k_t.mT)
            g_q = None if g_q is None else _merge(g_q)
        return g_q, g_k, None if g_v is None else _merge(g_v), None, None


def _split(t, heads: int):   # [B, T, H] -> [B, heads, T, H / heads]
    b, n, h = t.shape
    return t.reshape(b, n, heads, h // heads).transpose(1, 2).contiguous()


def _merge(t):               # [B, heads, T, dh] -> [B, T, heads * dh]
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def attention(q: SharedTensor, k: SharedTensor, v: SharedTensor, mask: SharedTensor | None,
              heads: int) -> SharedTensor:
    for t in (q, k, v):
        _fixed_point(t, "attention")
    _bits(mask, "attention")
    return AttentionFunction.apply(q, k, v, _share(mask), heads)


class LayerNormFunction(Function):
    """y = xhat gamma + beta over the last dim (protocols.layernorm for xhat and its backward)."""

    @staticmethod
    def forward(fctx, x, gamma, beta, eps):
        ctx = fctx.mpc
        xhat, rstd = layernorm.layernorm(ctx, x, eps)
        if any(fctx.needs_input_grad):
            fctx.xhat, fctx.rstd, fctx.gamma = xhat, rstd, gamma
        if gamma.secret:
            return fixed.mul(ctx, xhat, gamma.data) + beta.share()
        return truncate(ctx, xhat * gamma.data) + beta.share()

    @staticmethod
    def backward(fctx, grad):
        ctx, needs = fctx.mpc, fctx.needs_input_grad
        g_gamma = g_beta = g_x = None
        if needs[1]:
            g_gamma = _per_example(fixed.mul(ctx, grad, fctx.xhat)).sum(0)
        if needs[2]:
            g_beta = _per_example(grad).sum(0)
        if needs[0]:
            gamma = fctx.gamma
            g_xhat = fixed.mul(ctx, grad, gamma.data) if gamma.secret else truncate(ctx, grad * gamma.data)
            g_x = layernorm.layernorm_backward(ctx, g_xhat, fctx.xhat, fctx.rstd)
        return g_x, g_gamma, g_beta, None


def _per_example(t):
    """[batch, ..., d] -> [batch, d]: the sum over every position of each example."""
    return t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)


def layer_norm(x: SharedTensor, gamma, beta, eps: float) -> SharedTensor:
    _fixed_point(x, "layer_norm")
    return LayerNormFunction.apply(x, gamma, beta, eps)


class GELUFunction(Function):
    """GELU(x); forward also computes GELU'(x) from the same powers when x needs a gradient."""

    @staticmethod
    def forward(fctx, x):
        if not fctx.needs_input_grad[0]:
            return activations.gelu(fctx.mpc, x)
        y, fctx.slope = activations.gelu(fctx.mpc, x, with_grad=True)
        return y

    @staticmethod
    def backward(fctx, grad):
        return (fixed.mul(fctx.mpc, grad, fctx.slope),)


def gelu(x: SharedTensor) -> SharedTensor:
    _fixed_point(x, "gelu")
    return GELUFunction.apply(x)


class MeanPoolFunction(Function):
    """sum_t m_t h_t / sum_t m_t over the tokens of h [B, T, H] for the shared 0/1 mask [B, T],
    as sentence-transformers pools; the counts' reciprocal is computed under MPC, exactly
    (protocols.reciprocal.count_reciprocal)."""

    @staticmethod
    def forward(fctx, h, mask):
        ctx = fctx.mpc
        m = mask.unsqueeze(-1)
        summed = beaver.mul(ctx, h, m).sum(1)                      # mask has scale 1: no truncation
        inverse = reciprocal.count_reciprocal(ctx, mask.sum(1, keepdim=True), h.shape[1])
        if fctx.needs_input_grad[0]:
            fctx.inverse, fctx.mask = inverse, m
        return fixed.mul(ctx, summed, inverse)

    @staticmethod
    def backward(fctx, grad):
        per_token = fixed.mul(fctx.mpc, grad, fctx.inverse).unsqueeze(1)     # [B, 1, H]
        return beaver.mul(fctx.mpc, per_token, fctx.mask), None              # x [B, T, 1]


def mean_pool(h: SharedTensor, mask: SharedTensor) -> SharedTensor:
    _fixed_point(h, "mean_pool")
    _bits(mask, "mean_pool")
    return MeanPoolFunction.apply(h, mask.share)


class CrossEntropyFunction(Function):
    """Mean cross-entropy of logits [B, L] against shared one-hot labels; forward computes the
    gradient (softmax - labels) / B (protocols.softmax.cross_entropy) and, when asked, the loss.
    Backward scales it by the output gradient: a public integer (a loss scale) exactly."""

    public_grad = True

    @staticmethod
    def forward(fctx, logits, labels, with_value):
        fctx.grad, loss = softmax.cross_entropy(fctx.mpc, logits, labels, with_loss=with_value)
        return loss if with_value else fctx.grad.new_zeros(())

    @staticmethod
    def backward(fctx, grad):
        ctx = fctx.mpc
        if isinstance(grad, int):
            g = fctx.grad * grad
        elif isinstance(grad, float):
            g = fixed.mul_public(ctx, fctx.grad, grad)
        else:
            g = fixed.mul(ctx, fctx.grad, grad)
        return g, None, None


class UnevaluatedLoss(SharedTensor):
    """The result of cross_entropy(value=False): backward() works, the value was never computed."""

    def reveal(self):
        raise RuntimeError("this loss's value was not computed (cross_entropy(..., value=False))")

    reveal_to = reveal


def cross_entropy(logits: SharedTensor, labels: SharedTensor, value: bool = True) -> SharedTensor:
    """Mean cross-entropy against shared one-hot labels [B, L] (scale f). value=False skips the
    loss itself (a product and a log) when only its gradient is wanted."""
    _fixed_point(logits, "cross_entropy")
    _fixed_point(labels, "cross_entropy")
    loss = CrossEntropyFunction.apply(logits, labels, value)
    if value:
        return loss
    unevaluated = UnevaluatedLoss(loss.ctx, loss.share)
    unevaluated.requires_grad, unevaluated.grad_fn = loss.requires_grad, loss.grad_fn
    return unevaluated
