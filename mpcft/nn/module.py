"""Module and Parameter: the nn.Module-like structure of MPC layers.

A Parameter is either public (a frozen pretrained weight every party holds, encoded in the
ring, used in products that need no triple and no communication) or secret (additive
shares, trained; its `grad` holds shares of the gradient). Secret parameters are shared by
party `owner` from a plaintext initial value, with pairwise seeds: nothing is sent.
"""
import torch

from mpcft.protocols import sharing


class Parameter:
    def __init__(self, ctx, value: torch.Tensor, trainable: bool, owner: int = 0):
        self.ctx, self.trainable = ctx, trainable
        self.shape = tuple(value.shape)
        encoded = ctx.fp.encode(value.detach().to(torch.float64)).to(ctx.device)
        if trainable:
            self.data = sharing.share(ctx, encoded if ctx.rank == owner else None, owner, self.shape)
        else:
            self.data = encoded
        self.grad = None
        self.grad_sample = None   # per-example gradients [batch, *shape], when requested

    def accumulate(self, grad: torch.Tensor) -> None:
        self.grad = grad if self.grad is None else self.grad + grad


class Module:
    """Layers register Parameters and sub-Modules as attributes, as in torch.nn."""

    def __init__(self, ctx):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        self.ctx = ctx
        self.per_example = False

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = ""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def trainable_parameters(self):
        return [p for _, p in self.named_parameters() if p.trainable]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self) -> None:
        for _, p in self.named_parameters():
            p.grad = p.grad_sample = None

    def track_per_example(self, enabled: bool = True) -> None:
        """Keep per-example gradients of trainable parameters (for DP-SGD clipping)."""
        for m in self.modules():
            m.per_example = enabled

    def state_dict(self) -> dict:
        """{name: int64 tensor}: this party's shares of secret parameters, encodings of public ones."""
        return {name: p.data.clone() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        params = dict(self.named_parameters())
        missing, unexpected = set(params) - set(state), set(state) - set(params)
        if missing or unexpected:
            raise KeyError(f"state_dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for name, tensor in state.items():
            if tuple(tensor.shape) != params[name].shape or tensor.dtype != torch.int64:
                raise ValueError(f"{name}: expected int64 {params[name].shape}, got {tensor.dtype} {tuple(tensor.shape)}")
            params[name].data = tensor.clone()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)
