"""A sequence classifier on top of a pretrained BERT-family encoder, run under MPC.

The top `mpc_layers` encoder layers run under MPC, then masked mean pooling and a new linear
head; the frozen layers below run at the data owners, who share the hidden states entering
the first MPC layer (with mpc_layers = 0, the pooled embeddings). Running the frozen bottom
locally reveals nothing: its inputs and outputs never leave the owner except as secret
shares. Every encoder weight starts public and frozen (pretrained) and the head secret and
trained; mpcft.nn.peft chooses what else is trained (whole layers, LoRA adapters).
"""
import torch

from mpcft.protocols import comparison
from mpcft.tensor import SharedTensor, stack

from .bert import BertLayer, MeanPool
from .layers import Linear
from .module import Module

GRAD_SCALE = 1 << 10


class Classifier(Module):
    """grad_scale: the public integer loss scale S for `loss.backward(model.grad_scale)`, as in
    loss scaling for half precision: attention gradients of ~1e-5 would otherwise sit within a
    few units of 2^-20. Parameters' `grad` then hold S times the gradient; the optimizers
    (grad_scale=S) divide it out in their learning-rate product, exactly."""

    def __init__(self, ctx, encoder, num_labels: int, mpc_layers: int = 0, seed: int = 0):
        super().__init__(ctx)
        config = encoder.config
        if not 0 <= mpc_layers <= config.num_hidden_layers:
            raise ValueError(f"mpc_layers must be in [0, {config.num_hidden_layers}], got {mpc_layers}")
        self.blocks = []
        for i, hf_layer in enumerate(encoder.encoder.layer[config.num_hidden_layers - mpc_layers:]):
            block = BertLayer(ctx, hf_layer, config.num_attention_heads)
            setattr(self, f"layer{i}", block)
            self.blocks.append(block)
        self.pool = MeanPool(ctx) if mpc_layers else None
        gen = torch.Generator().manual_seed(seed)  # public initialisation of the new head
        head = torch.randn(num_labels, config.hidden_size, generator=gen, dtype=torch.float64) * 0.02  # noqa: csprng
        self.head = Linear(ctx, head, torch.zeros(num_labels, dtype=torch.float64), secret=True,
                           requires_grad=True)
        self.mpc_layers = mpc_layers
        self.first_layer = config.num_hidden_layers - mpc_layers
        self.grad_scale = GRAD_SCALE

    def forward(self, inputs: SharedTensor, mask: SharedTensor | None = None) -> SharedTensor:
        """inputs: pooled embeddings [B, H] (no MPC layers) or hidden states [B, T, H] with the
        shared 0/1 padding mask [B, T] (frac_bits 0). Returns logits [B, labels]."""
        h = inputs
        for block in self.blocks:
            h = block(h, mask[:, None, None, :])
        if self.pool is not None:
            h = self.pool(h, mask)
        return self.head(h)


def count_correct(logits: SharedTensor, labels: SharedTensor, bound: int = 1 << 12) -> SharedTensor:
    """Shares (frac_bits 0) of how many rows of logits [B, L] have their maximum at the shared
    one-hot label [B, L] (ties count as correct), for |logits| < bound / 2. With K = bound,
    max_j(z_j + K y_j) - K is the label's score and max_j(z_j - K y_j) the best other one;
    both maxima come from one max_along, and one sign_bit compares them. Nothing is opened.
    Cost: max_along_cost(n, 2 B L, L) + sign_cost(n, B)."""
    ctx = logits.ctx
    scores = stack([logits.detach() + labels * bound, logits.detach() - labels * bound])
    best = comparison.max_along(ctx, scores.share, -1)
    margin = best[0, :, 0] - best[1, :, 0]                 # label score + K - best other score
    wrong = SharedTensor(ctx, comparison.sign_bit(ctx, margin - ctx.public(float(bound), margin.shape)), 0)
    return wrong.numel() - wrong.sum()
