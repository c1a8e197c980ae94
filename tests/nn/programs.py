"""Party programs for the nn tests (module level, so that spawn can run them too)."""
import torch
from transformers import BertConfig, BertModel

from mpcft.nn import SGD, Classifier
from mpcft.protocols import sharing
from mpcft.protocols.context import MPCContext

DEVICE = None   # where the programs keep shares (tests/conftest.py: the `device` fixture)

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
    """Shares of a fixed-point tensor (or, bits_only, of a 0/1 integer tensor at scale 1)."""
    if bits_only:
        ring = value.to(torch.int64)
    else:
        ring = ctx.fp.encode(value)
    return sharing.share(ctx, ring if ctx.rank == owner else None, owner, tuple(value.shape))


def gradients(session, inputs, mask, labels, mode, layers, encoder, steps=0, lr=0.1):
    """Forward, cross-entropy backward; revealed logits, loss and trainable gradients by name."""
    ctx = MPCContext(session, device=DEVICE)
    model = Classifier(ctx, encoder, labels.shape[1], mode=mode, layers=layers)
    x = share_from(ctx, inputs, 0)
    m = share_from(ctx, mask, 1, bits_only=True) if mask is not None else None
    y = share_from(ctx, labels, session.world_size - 1)
    reveal = lambda t: ctx.fp.decode(sharing.open_(ctx, t))
    logits = model(x, m)
    loss = model.loss_backward(logits, y, with_loss=True)
    out = {"logits": reveal(logits), "loss": reveal(loss),
           "grads": {name: reveal(p.grad) / model.grad_scale
                     for name, p in model.named_parameters() if p.trainable}}
    optimizer = SGD(model.trainable_parameters(), lr=lr, momentum=0.9, grad_scale=model.grad_scale)
    losses = []
    for _ in range(steps):
        optimizer.step()
        optimizer.zero_grad()
        losses.append(reveal(model.loss_backward(model(x, m), y, with_loss=True)).item())
    out["losses"] = losses
    return out


def per_example_gradients(session, inputs, mask, labels, mode, layers, encoder):
    """Revealed per-example gradients (grad_sample) and summed gradients, by parameter name."""
    ctx = MPCContext(session, device=DEVICE)
    model = Classifier(ctx, encoder, labels.shape[1], mode=mode, layers=layers)
    model.track_per_example()
    x = share_from(ctx, inputs, 0)
    m = share_from(ctx, mask, 1, bits_only=True) if mask is not None else None
    y = share_from(ctx, labels, session.world_size - 1)
    model.loss_backward(model(x, m), y)
    reveal = lambda t: ctx.fp.decode(sharing.open_(ctx, t)) / model.grad_scale
    params = [(name, p) for name, p in model.named_parameters() if p.trainable]
    return {name: (reveal(p.grad_sample), reveal(p.grad)) for name, p in params}


def correct_predictions(session, logits, labels):
    """count_correct on shared logits (party 0's) and one-hot labels (party n-1's); opened count, cost."""
    from mpcft.nn import count_correct
    ctx = MPCContext(session, device=DEVICE)
    z, y = share_from(ctx, logits, 0), share_from(ctx, labels, session.world_size - 1)
    before = session.comm.snapshot()
    count = count_correct(ctx, z, y)
    delta = session.comm.snapshot() - before
    return sharing.open_(ctx, count).item(), (delta.rounds, delta.bytes_sent)
