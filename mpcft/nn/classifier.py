"""A sequence classifier on top of a pretrained BERT-family encoder, trained under MPC.

Which part runs under MPC follows from what is trained (`mode`):
- "head": only the classification head; every encoder layer is frozen, so each data owner
  runs the whole encoder (and mean pooling) on its own plaintext and shares the pooled
  embedding.
- "top": the top `layers` encoder layers and the head are trained; the frozen layers below
  run at the data owners, who share the hidden states entering the first trained layer.
- "lora": rank-r LoRA adapters on the query and value projections of the top `layers`
  layers, plus the head; those layers' own weights stay public.
- "all": every encoder layer and the head (the embeddings stay frozen and local).
Running the frozen bottom locally reveals nothing: its inputs and outputs never leave the
owner except as secret shares. The model's weights are public (pretrained); trained
parameters are secret from the first update on.
"""
import torch

from mpcft.protocols import comparison, softmax

from .bert import BertLayer, MeanPool
from .layers import Linear
from .module import Module

MODES = ("head", "top", "lora", "all")
GRAD_SCALE = 1 << 10


def mpc_layer_count(mode: str, total: int, layers: int) -> int:
    """How many top encoder layers run under MPC."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if mode == "head":
        return 0
    if mode == "all":
        return total
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be in [1, {total}] for mode {mode!r}, got {layers}")
    return layers


class Classifier(Module):
    def __init__(self, ctx, encoder, num_labels: int, mode: str = "head", layers: int = 2,
                 lora_rank: int = 8, lora_alpha: float = 16.0, seed: int = 0):
        super().__init__(ctx)
        config = encoder.config
        count = mpc_layer_count(mode, config.num_hidden_layers, layers)
        lora = {"rank": lora_rank, "alpha": lora_alpha, "seed": seed} if mode == "lora" else None
        hf_layers = encoder.encoder.layer[config.num_hidden_layers - count:]
        self.blocks = []
        for i, hf_layer in enumerate(hf_layers):
            block = BertLayer(ctx, hf_layer, config.num_attention_heads, train=mode in ("top", "all"),
                              lora=lora, needs_input_grad=i > 0)
            setattr(self, f"layer{i}", block)
            self.blocks.append(block)
        self.pool = MeanPool(ctx) if count else None
        gen = torch.Generator().manual_seed(seed)  # public initialisation of the new head
        head = torch.randn(num_labels, config.hidden_size, generator=gen, dtype=torch.float64) * 0.02  # noqa: csprng
        self.head = Linear(ctx, head, torch.zeros(num_labels, dtype=torch.float64), trainable=True,
                           needs_input_grad=count > 0)
        self.mpc_layers = count
        self.grad_scale = GRAD_SCALE

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """inputs: shares of pooled embeddings [B, H] (mode head) or hidden states [B, T, H]."""
        h = inputs
        for block in self.blocks:
            h = block(h, mask[:, None, None, :])
        if self.pool is not None:
            h = self.pool(h, mask)
        return self.head(h)

    def backward(self, grad_logits: torch.Tensor) -> None:
        g = self.head.backward(grad_logits)
        if self.pool is not None:
            g = self.pool.backward(g)
        for block in reversed(self.blocks):
            g = block.backward(g)

    def loss_backward(self, logits, labels, with_loss: bool = False):
        """Cross-entropy against shared one-hot labels: backward pass, returns loss shares or None.

        Gradients are scaled by the public integer GRAD_SCALE (exactly: shares times an
        integer), as in loss scaling for half precision: attention gradients of ~1e-5 would
        otherwise sit within a few units of 2^-20. Parameters' `grad` hold the scaled values;
        SGD(grad_scale=GRAD_SCALE) divides it out in its learning-rate product.
        """
        grad, loss = softmax.cross_entropy(self.ctx, logits, labels, with_loss=with_loss)
        self.backward(grad * self.grad_scale)
        return loss


def count_correct(ctx, logits: torch.Tensor, labels: torch.Tensor, bound: int = 1 << 12) -> torch.Tensor:
    """Shares (scale 1) of how many rows of logits [B, L] have their maximum at the shared
    one-hot label [B, L] (ties count as correct), for |logits| < bound / 2. With K = bound,
    max_j(z_j + K y_j) - K is the label's score and max_j(z_j - K y_j) the best other one;
    both maxima come from one max_along, and one sign_bit compares them. Nothing is opened.
    Cost: max_along_cost(n, 2 B L, L) + sign_cost(n, B)."""
    best = comparison.max_along(ctx, torch.stack([logits + labels * bound, logits - labels * bound]), -1)
    margin = best[0, :, 0] - best[1, :, 0]                 # label score + K - best other score
    k = ctx.fp.encode(torch.tensor(float(bound)))
    wrong = comparison.sign_bit(ctx, margin - k if ctx.rank == 0 else margin)
    correct = -wrong.sum()
    return correct + wrong.numel() if ctx.rank == 0 else correct
