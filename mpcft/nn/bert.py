"""A BERT encoder layer, pooling and classification head on shares, with backward passes.

BertLayer (post-LN, as in BERT and MiniLM):
  a = Attention(x); x1 = LN1(x + a); f = W2 GELU(W1 x1); out = LN2(x1 + f).
Attention: q, k, v = x Wq^T, x Wk^T, x Wv^T per head; p = softmax(q k^T / sqrt(dh), mask);
  c = p v; a = c Wo^T. The padding mask is secret-shared (0/1, scale 1), so sequence lengths
  stay private: exponentials of padded keys are multiplied by it.
MeanPool: sum_t m_t h_t / sum_t m_t with the shared mask, as sentence-transformers pools.
Each trained weight is a secret Parameter; frozen ones stay public (local products).
"""
import math

from mpcft.protocols import beaver, fixed, reciprocal, softmax
from mpcft.protocols.truncation import truncate

from .layers import GELU, LayerNorm, Linear, LoRALinear
from .module import Module


# names of a BertLayer's parameters here -> in a Hugging Face BertLayer
HF_NAMES = {
    "attention.query": "attention.self.query", "attention.key": "attention.self.key",
    "attention.value": "attention.self.value", "attention.output": "attention.output.dense",
    "norm1": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
    "output": "output.dense", "norm2": "output.LayerNorm",
}
HF_FIELDS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def hf_parameter_name(name: str) -> str:
    """'attention.query.weight' -> 'attention.self.query.weight' (LoRA names are not HF names)."""
    module, field = name.rsplit(".", 1)
    return f"{HF_NAMES[module]}.{HF_FIELDS[field]}"


def _linear(ctx, dense, train: bool, lora, needs_input_grad: bool):
    """A Linear (trained or frozen) or a LoRA-adapted frozen Linear from a torch nn.Linear."""
    weight, bias = dense.weight.detach().double(), dense.bias.detach().double()
    if lora is not None and not train:
        return LoRALinear(ctx, weight, bias, lora["rank"], lora["alpha"], lora.get("seed", 0),
                          needs_input_grad)
    return Linear(ctx, weight, bias, train, needs_input_grad)


class Attention(Module):
    def __init__(self, ctx, hf_attention, heads: int, train: bool, lora=None, needs_input_grad=True):
        super().__init__(ctx)
        self.heads = heads
        self_attn, out = hf_attention.self, hf_attention.output.dense
        self.query = _linear(ctx, self_attn.query, train, lora, needs_input_grad)
        self.key = _linear(ctx, self_attn.key, train, None, needs_input_grad)
        self.value = _linear(ctx, self_attn.value, train, lora, needs_input_grad)
        self.output = _linear(ctx, out, train, None, True)
        self.needs_input_grad = needs_input_grad

    def _split(self, t):   # [B, T, H] -> [B, heads, T, dh]
        b, n, h = t.shape
        return t.reshape(b, n, self.heads, h // self.heads).transpose(1, 2).contiguous()

    def forward(self, x, mask):
        ctx = self.ctx
        q, k, v = (self._split(layer(x)) for layer in (self.query, self.key, self.value))
        self._scale = 1 / math.sqrt(q.shape[-1])
        scores = fixed.mul_public(ctx, truncate(ctx, beaver.matmul(ctx, q, k.mT.contiguous())), self._scale)
        p = softmax.softmax(ctx, scores, clamp=True, shared_mask=mask)
        c = truncate(ctx, beaver.matmul(ctx, p, v))
        self._cache = (q, k, v, p)
        b, _, n, _ = c.shape
        return self.output(c.transpose(1, 2).reshape(b, n, -1))

    def backward(self, grad):
        ctx = self.ctx
        q, k, v, p = self._cache
        g_c = self._split(self.output.backward(grad))
        g_p = truncate(ctx, beaver.matmul(ctx, g_c, v.mT.contiguous()))
        g_v = truncate(ctx, beaver.matmul(ctx, p.mT.contiguous(), g_c))
        g_scores = fixed.mul_public(ctx, softmax.softmax_backward(ctx, p, g_p), self._scale)
        g_q = truncate(ctx, beaver.matmul(ctx, g_scores, k))
        g_k = truncate(ctx, beaver.matmul(ctx, g_scores.mT.contiguous(), q))
        merge = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)
        grads = [layer.backward(merge(g)) for layer, g in
                 ((self.query, g_q), (self.key, g_k), (self.value, g_v))]
        return grads[0] + grads[1] + grads[2] if self.needs_input_grad else None


class BertLayer(Module):
    """One post-LN encoder layer built from a Hugging Face BertLayer's weights."""

    def __init__(self, ctx, hf_layer, heads: int, train: bool, lora=None, needs_input_grad=True):
        super().__init__(ctx)
        self.attention = Attention(ctx, hf_layer.attention, heads, train, lora, needs_input_grad)
        ln1, ln2 = hf_layer.attention.output.LayerNorm, hf_layer.output.LayerNorm
        self.norm1 = LayerNorm(ctx, ln1.weight.detach().double(), ln1.bias.detach().double(), ln1.eps, train)
        self.intermediate = _linear(ctx, hf_layer.intermediate.dense, train, None, True)
        self.activation = GELU(ctx)
        self.output = _linear(ctx, hf_layer.output.dense, train, None, True)
        self.norm2 = LayerNorm(ctx, ln2.weight.detach().double(), ln2.bias.detach().double(), ln2.eps, train)
        self.needs_input_grad = needs_input_grad

    def forward(self, x, mask):
        x1 = self.norm1(x + self.attention(x, mask))
        return self.norm2(x1 + self.output(self.activation(self.intermediate(x1))))

    def backward(self, grad):
        g_sum2 = self.norm2.backward(grad)
        g_x1 = g_sum2 + self.intermediate.backward(self.activation.backward(self.output.backward(g_sum2)))
        g_sum1 = self.norm1.backward(g_x1)
        g_attn = self.attention.backward(g_sum1)
        return g_sum1 + g_attn if self.needs_input_grad else None


class MeanPool(Module):
    """Mean of the token states under the shared 0/1 mask [batch, tokens]."""

    def forward(self, h, mask):
        ctx = self.ctx
        m = mask.unsqueeze(-1)
        summed = beaver.mul(ctx, h, m).sum(1)                      # bits: no truncation
        counts = mask.sum(1, keepdim=True) << ctx.frac_bits         # encode the integer counts
        self._inverse = reciprocal.reciprocal(ctx, counts, lo=0.5, hi=h.shape[1] * 1.1, bits=32)
        self._mask = m
        return fixed.mul(ctx, summed, self._inverse)

    def backward(self, grad):
        ctx = self.ctx
        per_token = fixed.mul(ctx, grad, self._inverse).unsqueeze(1)      # [B, 1, H]
        return beaver.mul(ctx, per_token, self._mask)                      # x [B, T, 1], broadcast
