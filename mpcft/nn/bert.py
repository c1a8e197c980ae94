"""A BERT encoder layer and mean pooling on SharedTensors, from a Hugging Face BertLayer.

BertLayer (post-LN, as in BERT and MiniLM):
  a = Attention(x); x1 = LN1(x + a); f = W2 GELU(W1 x1); out = LN2(x1 + f).
Attention: q, k, v = x Wq^T, x Wk^T, x Wv^T per head; p = softmax(q k^T / sqrt(dh), mask);
  c = p v; a = c Wo^T. The padding mask is secret-shared (0/1, scale 1), so sequence lengths
  stay private: exponentials of padded keys are multiplied by it.
MeanPool: sum_t m_t h_t / sum_t m_t with the shared mask, as sentence-transformers pools.
Every weight starts public and frozen (pretrained); mpcft.nn.peft chooses what is trained.
"""
from . import functional as F
from .layers import GELU, LayerNorm, Linear, project
from .module import Module


class Attention(Module):
    def __init__(self, ctx, hf_attention, heads: int):
        super().__init__(ctx)
        self.heads = heads
        self_attn = hf_attention.self
        self.query = Linear.from_torch(ctx, self_attn.query)
        self.key = Linear.from_torch(ctx, self_attn.key)
        self.value = Linear.from_torch(ctx, self_attn.value)
        self.output = Linear.from_torch(ctx, hf_attention.output.dense)

    def forward(self, x, mask):
        q, k, v = project(x, [self.query, self.key, self.value])          # their rounds shared
        return self.output(F.attention(q, k, v, mask, self.heads))


class BertLayer(Module):
    """One post-LN encoder layer built from a Hugging Face BertLayer's weights."""

    def __init__(self, ctx, hf_layer, heads: int):
        super().__init__(ctx)
        self.attention = Attention(ctx, hf_layer.attention, heads)
        self.norm1 = LayerNorm.from_torch(ctx, hf_layer.attention.output.LayerNorm)
        self.intermediate = Linear.from_torch(ctx, hf_layer.intermediate.dense)
        self.activation = GELU(ctx)
        self.output = Linear.from_torch(ctx, hf_layer.output.dense)
        self.norm2 = LayerNorm.from_torch(ctx, hf_layer.output.LayerNorm)

    def forward(self, x, mask):
        """x [B, T, H]; mask: shares of the 0/1 key mask broadcastable to [B, heads, T, T]."""
        x1 = self.norm1(x + self.attention(x, mask))
        return self.norm2(x1 + self.output(self.activation(self.intermediate(x1))))


class MeanPool(Module):
    """Mean of the token states under the shared 0/1 mask [batch, tokens]."""

    def forward(self, h, mask):
        return F.mean_pool(h, mask)
