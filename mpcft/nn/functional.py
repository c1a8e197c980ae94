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

import torch

from mpcft.kernels import ring_matmul
from mpcft.protocols import activations, beaver, fixed, layernorm, reciprocal, softmax
from mpcft.protocols.parallel import parallel
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


# a LoRA scaling s = alpha / r joins a truncation encoded at 2^-12 (exact for powers of two),
# valid while |s h| < 2^(62 - 2f - 12) = 1024 at f = 20 (h = x A^T, and likewise g B backward)
_SCALING_EXTRA_BITS = 12


class ProjectionsFunction(Function):
    """Projections of one input x [..., in], concatenated: y_j = x W_j^T + b_j, plus
    s_j (x A_j^T) B_j^T where projection j has a LoRA adapter (A_j [r_j, in], B_j [out_j, r_j],
    s_j = alpha / r). One Function, so that the projections share their rounds:
      forward: one Beaver product of x with [W^T of the secret W_j | every A_j^T] (x opened
        masked once); the adapters' h_j = s_j x A_j^T truncated together, s_j folded into the
        truncation; one product of [h_j] with the block diagonal of the B_j^T; then every
        output (public x W_j^T local) truncated in one round: 4 rounds (2 without adapters, 1
        with public weights only);
      backward: the mirror image (each product keeps its masks: beaver.MatmulWithGrads): G's
        adapter columns opened against the B product, dB_j and s_j dh_j truncated together,
        [G of the secret W_j | s_j dh_j] opened against the x product, then dx (with the
        public G_j W_j local), dW_j and dA_j truncated in one round: 4 rounds.
    A weight with per-example gradients keeps to LinearFunction (mpcft.nn.layers.project)."""

    @staticmethod
    def forward(fctx, x, layout, *params):
        ctx, needs = fctx.mpc, fctx.needs_input_grad
        fctx.params, fctx.in_shape = params, x.shape
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        parts = _projection_parts(layout)
        fctx.parts = parts
        need = lambda i: needs[2 + i]                                        # noqa: E731
        secret = [j for j, p in enumerate(parts) if params[p["w"]].secret]
        adapted = [j for j, p in enumerate(parts) if p["lora"] is not None]
        fctx.secret, fctx.adapted = secret, adapted
        grad_h = needs[0] or any(need(parts[j]["lora"][0]) for j in adapted)
        columns = [params[parts[j]["w"]].data.mT for j in secret] + [params[parts[j]["lora"][0]].data.mT
                                                                     for j in adapted]
        fctx.x_product = fctx.b_product = None
        if columns:
            grad_y = any(need(parts[j]["w"]) for j in secret) or any(need(parts[j]["lora"][0]) for j in adapted)
            fctx.x_product, x_out = _product_with_grads(ctx, x2, torch.cat(columns, 1).contiguous(), needs[0], grad_y)
            x_out = x_out.split([params[parts[j]["w"]].shape[0] for j in secret]
                                + [params[parts[j]["lora"][0]].shape[0] for j in adapted], 1)
        lora_out = []
        if adapted:
            hidden = truncate_many(ctx, [(x_out[len(secret) + i] * _scaling(parts[j]["scaling"]),
                                          ctx.frac_bits + _SCALING_EXTRA_BITS) for i, j in enumerate(adapted)])
            diagonal = torch.block_diag(*(params[parts[j]["lora"][1]].data.mT for j in adapted)).contiguous()
            fctx.b_product, out = _product_with_grads(ctx, torch.cat(hidden, 1).contiguous(), diagonal, grad_h,
                                                      any(need(parts[j]["lora"][1]) for j in adapted))
            lora_out = out.split([parts[j]["out"] for j in adapted], 1)
        raw = []
        for j, p in enumerate(parts):
            weight = params[p["w"]]
            y = x_out[secret.index(j)] if weight.secret else ring_matmul(x2, weight.data.mT.contiguous())
            raw.append(y + lora_out[adapted.index(j)] if j in adapted else y)
        y = truncate(ctx, torch.cat(raw, 1))
        bias = torch.cat([params[p["b"]].share() if p["b"] is not None else y.new_zeros(p["out"]) for p in parts])
        return (y + bias).reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(fctx, grad):
        ctx, needs, parts, params = fctx.mpc, fctx.needs_input_grad, fctx.parts, fctx.params
        secret, adapted = fctx.secret, fctx.adapted
        need = lambda i: needs[2 + i]                                        # noqa: E731
        g2 = grad.reshape(-1, grad.shape[-1])
        g = g2.split([p["out"] for p in parts], 1)
        grads = [None] * len(params)
        for p, g_j in zip(parts, g):
            if p["b"] is not None and need(p["b"]):
                grads[p["b"]] = g_j.sum(0)
        b_grads, scaled_dh = [], []                                # (param index, raw, shift)
        if fctx.b_product is not None and (fctx.b_product.grad_x or fctx.b_product.grad_y):
            g_h, g_diag = fctx.b_product.backward(torch.cat([g[j] for j in adapted], 1).contiguous())
            rows = cols = 0
            for i, j in enumerate(adapted):
                a, b = parts[j]["lora"]
                rank, out = params[b].shape[1], parts[j]["out"]
                if need(b):
                    b_grads.append((b, g_diag[rows:rows + rank, cols:cols + out].mT.contiguous(), ctx.frac_bits))
                if g_h is not None:
                    scaled_dh.append((g_h[:, rows:rows + rank] * _scaling(parts[j]["scaling"]),
                                      ctx.frac_bits + _SCALING_EXTRA_BITS))
                rows, cols = rows + rank, cols + out
        dh = iter(())
        if b_grads or scaled_dh:
            done = truncate_many(ctx, [(raw, shift) for _, raw, shift in b_grads] + scaled_dh)
            for (index, _, _), value in zip(b_grads, done):
                grads[index] = value
            dh = iter(done[len(b_grads):])
        wanted, gx = [], None                                       # (param index, raw)
        if fctx.x_product is not None and (fctx.x_product.grad_x or fctx.x_product.grad_y):
            # columns of A_j whose h_j carries no gradient (no dh) get zeros: only their masks open
            g_cols = [g[j] for j in secret] + [next(dh, None) for _ in adapted]
            g_cols = [c if c is not None else g2.new_zeros(g2.shape[0], params[parts[j]["lora"][0]].shape[0])
                      for c, j in zip(g_cols, secret + adapted)]
            gx, g_y = fctx.x_product.backward(torch.cat(g_cols, 1).contiguous())
            if g_y is not None:
                indices = [parts[j]["w"] for j in secret] + [parts[j]["lora"][0] for j in adapted]
                for index, part in zip(indices, g_y.split([params[i].shape[0] for i in indices], 1)):
                    if need(index):
                        wanted.append((index, part.mT.contiguous()))
        if needs[0]:
            public = [ring_matmul(g[j].contiguous(), params[p["w"]].data) for j, p in enumerate(parts)
                      if not params[p["w"]].secret]
            gx = sum(public, gx if gx is not None else 0)
        done = _truncated(ctx, [gx if needs[0] else None] + [raw for _, raw in wanted])
        for (index, _), value in zip(wanted, done[1:]):
            grads[index] = value
        gx = done[0].reshape(fctx.in_shape) if needs[0] else None
        return (gx, None, *grads)


def _projection_parts(layout) -> list:
    """Per projection: its out features, the indices of W, b (or None) and (A, B) (or None) in
    the flat parameter list, and the LoRA scaling."""
    parts, i = [], 0
    for out, has_bias, scaling in layout:
        part = {"out": out, "w": i, "b": i + 1 if has_bias else None, "scaling": scaling, "lora": None}
        i += 1 + int(has_bias)
        if scaling is not None:
            part["lora"], i = (i, i + 1), i + 2
        parts.append(part)
    return parts


def _scaling(scaling: float) -> int:
    return round(scaling * 2.0 ** _SCALING_EXTRA_BITS)


def _product_with_grads(ctx, x, y, grad_x: bool, grad_y: bool):
    """(the product object or None, x @ y untruncated): masks kept where a gradient will follow."""
    if grad_x or grad_y:
        product = beaver.MatmulWithGrads(ctx, x, y, grad_x, grad_y)
        return product, product.out
    return None, beaver.matmul(ctx, x, y)


def projections(x: SharedTensor, parts) -> SharedTensor:
    """x's projections concatenated along the last dim (ProjectionsFunction); parts: one
    (W, b or None, (A, B, scaling) or None) per projection, nn.Parameters."""
    _fixed_point(x, "projections")
    layout, params = [], []
    for weight, bias, lora in parts:
        layout.append((weight.shape[0], bias is not None, None if lora is None else float(lora[2])))
        params += [weight] + ([bias] if bias is not None else []) + ([] if lora is None else list(lora[:2]))
    return ProjectionsFunction.apply(x, tuple(layout), *params)


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
    (protocols.reciprocal.count_reciprocal), beside the masked sum (protocols.parallel)."""

    @staticmethod
    def forward(fctx, h, mask):
        ctx = fctx.mpc
        m = mask.unsqueeze(-1)
        summed, inverse = parallel(                                # mask has scale 1: no truncation
            ctx, lambda c: beaver.mul(c, h, m).sum(1),
            lambda c: reciprocal.count_reciprocal(c, mask.sum(1, keepdim=True), h.shape[1]))
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
