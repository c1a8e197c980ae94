"""The same classifier in plain torch (float64, autograd), from the same Hugging Face weights."""
import math

import torch


def layer_forward(layer, x, mask):
    """Post-LN BERT layer with a 0/1 key mask [B, T] (padded keys get -inf)."""
    att = layer.attention.self
    b, t, h = x.shape
    heads = att.num_attention_heads if hasattr(att, "num_attention_heads") else layer.attention.self.config.num_attention_heads
    split = lambda z: z.reshape(b, t, heads, h // heads).transpose(1, 2)
    q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(h // heads)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, -math.inf)
    c = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, t, h)
    x1 = layer.attention.output.LayerNorm(x + layer.attention.output.dense(c))
    f = layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(x1)))
    return layer.output.LayerNorm(x1 + f)


def classifier_logits(encoder, head_weight, head_bias, inputs, mask, count, lora=None):
    h = inputs
    for layer in encoder.encoder.layer[len(encoder.encoder.layer) - count:]:
        h = layer_forward(layer, h, mask)
    if count:
        m = mask[..., None].double()
        h = (h * m).sum(1) / m.sum(1)
    return h @ head_weight.T + head_bias
