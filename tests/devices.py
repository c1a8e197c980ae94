"""Helpers for tests that run their party programs on several devices (the `device` fixture)."""
import torch


def to_cpu(value):
    """Tensors inside nested results, moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value
