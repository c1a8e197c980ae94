"""What is trained, chosen as PEFT transforms a model, and the way back to transformers.

A Classifier's encoder layers start public and frozen. `prepare(model, mode)` makes whole
layers trained (secret shares from their public values, dealt without bytes) or wraps the
attention projections in LoRA adapters; the head is always trained. `write_back` puts
revealed trained values into the torch modules the layers were built from (LoRA merged:
W + (alpha / r) B A), so the plaintext encoder becomes the fine-tuned model.
"""
import torch

from .bert import Attention
from .layers import LayerNorm, Linear, LoRALinear

MODES = ("head", "top", "lora", "all")


def mpc_layer_count(mode: str, total: int, layers: int) -> int:
    """How many top encoder layers run under MPC: none for mode head, all for mode all."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if mode == "head":
        return 0
    if mode == "all":
        return total
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be in [1, {total}] for mode {mode!r}, got {layers}")
    return layers


def train_module(module) -> None:
    """Train every parameter of `module`: secret shares of its current value, with gradients."""
    for p in module.parameters():
        p.make_secret_().requires_grad_()


def apply_lora(module, rank: int, alpha: float, seed: int = 0, targets=("query", "value")) -> list:
    """Wrap the `targets` projections of every Attention in `module` in LoRA adapters of rank r
    (their base weights stay public and frozen); returns the adapters."""
    adapters = []
    for _, m in list(module.named_modules()):
        if isinstance(m, Attention):
            for name in targets:
                adapter = LoRALinear(getattr(m, name), rank, alpha, seed)
                setattr(m, name, adapter)
                adapters.append(adapter)
    return adapters


def prepare(model, mode: str, lora_rank: int = 8, lora_alpha: float = 16.0, seed: int = 0):
    """Mode head: the head only; top and all: every MPC layer too; lora: LoRA adapters on the
    query and value projections of every MPC layer."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if mode in ("top", "all"):
        for block in model.blocks:
            train_module(block)
    elif mode == "lora":
        apply_lora(model, lora_rank, lora_alpha, seed)
    return model


def write_back(model, values: dict) -> None:
    """Write revealed values {Parameter: float tensor} of trained parameters into the torch
    modules the layers came from, merging LoRA adapters into their base weights."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear) and m.lora_a.weight in values:
                a, b = values[m.lora_a.weight], values[m.lora_b.weight]
                m.base.source.weight += (m.scaling * b @ a).to(m.base.source.weight.dtype)
            elif isinstance(m, (Linear, LayerNorm)) and m.source is not None:
                for p, target in zip(m.parameters(), (m.source.weight, m.source.bias)):
                    if p in values:
                        target.copy_(values[p])
