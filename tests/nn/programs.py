"""Party programs for the nn tests (module level, so that spawn can run them too)."""
import torch
from transformers import BertConfig, BertModel

from mpcft.nn import Classifier, count_correct, prepare
from mpcft.nn.functional import cross_entropy
from mpcft.protocols.context import MPCContext
from mpcft.tensor import SharedTensor

CONFIG = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=16, hidden_act="gelu",
              attn_implementation="eager")


def tiny_bert(seed: int = 0) -> BertModel:
    """A small random BERT (build it once and pass it to the parties: seeding is global)."""
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**CONFIG)).double()
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():   # non-trivial LayerNorm parameters
        if "LayerNorm" in name:
            p.data += 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
    return model.eval()


def share_from(ctx, value, owner, bits_only=False):
    """A SharedTensor of `value` dealt by `owner` (bits_only: 0/1 integers, frac_bits 0)."""
    return SharedTensor.from_plain(ctx, value if ctx.rank == owner else None, owner, tuple(value.shape),
                                   frac_bits=0 if bits_only else None)


def _model(ctx, encoder, labels, mode, layers, lora_b=None):
    """The classifier prepared for `mode`; lora_b: the value every LoRA B starts from instead of zero."""
    from mpcft.nn.layers import LoRALinear
    from mpcft.nn.module import Parameter
    model = prepare(Classifier(ctx, encoder, labels.shape[1], mpc_layers=0 if mode == "head" else layers), mode)
    for m in model.modules():
        if lora_b is not None and isinstance(m, LoRALinear):
            m.lora_b.weight = Parameter(ctx, lora_b, secret=True, requires_grad=True)
    return model


def _inputs(session, ctx, inputs, mask, labels):
    x = share_from(ctx, inputs, 0)
    m = share_from(ctx, mask, 1, bits_only=True) if mask is not None else None
    return x, m, share_from(ctx, labels, session.world_size - 1)


def gradients(session, inputs, mask, labels, mode, layers, encoder, device=None, lora_b=None):
    """Forward, cross-entropy backward; revealed logits, loss and trainable gradients by name
    (lora_b: as in _model)."""
    ctx = MPCContext(session, device=device)
    model = _model(ctx, encoder, labels, mode, layers, lora_b)
    x, m, y = _inputs(session, ctx, inputs, mask, labels)
    logits = model(x, m)
    loss = cross_entropy(logits, y)
    loss.backward(model.grad_scale)
    return {"logits": logits.reveal(), "loss": loss.reveal(),
            "grads": {name: p.grad.reveal() / model.grad_scale
                      for name, p in model.named_parameters() if p.requires_grad}}


def per_example_gradients(session, inputs, mask, labels, mode, layers, encoder, lora_b=None):
    """Revealed per-example gradients (grad_sample) and summed gradients, by parameter name;
    lora_b: as in _model."""
    ctx = MPCContext(session)
    model = _model(ctx, encoder, labels, mode, layers, lora_b)
    model.track_per_example()
    x, m, y = _inputs(session, ctx, inputs, mask, labels)
    cross_entropy(model(x, m), y, value=False).backward(model.grad_scale)
    reveal = lambda t: t.reveal() / model.grad_scale
    return {name: (reveal(p.grad_sample), reveal(p.grad))
            for name, p in model.named_parameters() if p.requires_grad}


def correct_predictions(session, logits, labels, device=None):
    """count_correct on shared logits (party 0's) and one-hot labels (party n-1's); opened count, cost."""
    ctx = MPCContext(session, device=device)
    z, y = share_from(ctx, logits, 0), share_from(ctx, labels, session.world_size - 1)
    before = session.comm.snapshot()
    count = count_correct(z, y)
    delta = session.comm.snapshot() - before
    return int(count.reveal().item()), (delta.rounds, delta.bytes_sent)
