"""The same classifier in plain torch (float64, autograd), from the same Hugging Face weights;
its BERT layer is the plaintext baseline's (mpcft.finetune.plaintext)."""
from mpcft.finetune.plaintext import _layer


def classifier_logits(encoder, head_weight, head_bias, inputs, mask, count, lora=None):
    h = inputs
    for layer in encoder.encoder.layer[len(encoder.encoder.layer) - count:]:
        att = layer.attention.self
        h = _layer(layer, h, mask, encoder.config.num_attention_heads, att.query, att.value)
    if count:
        m = mask[..., None].double()
        h = (h * m).sum(1) / m.sum(1)
    return h @ head_weight.T + head_bias
