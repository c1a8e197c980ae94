"""Module and Parameter: the nn.Module-like structure of MPC layers.

A Parameter is public (a pretrained weight every party holds, encoded in the ring: products
with it are local and need no triple) or secret (additive shares: products use Beaver
triples). Whether it is trained (`requires_grad`) is a separate choice, except that a
trained parameter is secret, since its updates depend on the private data. Secret
parameters are shared by party `owner` from a plaintext value with pairwise seeds: nothing
is sent. A trained parameter's `grad` (and `grad_sample`, per example) are SharedTensors.
"""
import torch

from mpcft.protocols import sharing
from mpcft.tensor import SharedTensor


class Parameter:
    def __init__(self, ctx, value: torch.Tensor, *, secret: bool = True, requires_grad: bool = True,
                 owner: int = 0):
        self.ctx, self.shape = ctx, tuple(value.shape)
        self.secret, self.requires_grad = False, False
        self.data = ctx.fp.encode(value.detach().to(torch.float64)).to(ctx.device)
        self.grad = self.grad_sample = None
        self.grad_sample_enabled = self.grad_sample_factors = False
        if secret:
            self.make_secret_(owner)
        self.requires_grad_(requires_grad)

    def __repr__(self):
        kind = "secret" if self.secret else "public"
        return f"Parameter({kind}, shape={self.shape}, requires_grad={self.requires_grad})"

    def make_secret_(self, owner: int = 0) -> "Parameter":
        """Turn a public parameter into shares of its value, dealt by `owner` (no bytes sent)."""
        if not self.secret:
            encoded = self.data if self.ctx.rank == owner else None
            self.data = sharing.share(self.ctx, encoded, owner, self.shape)
            self.secret = True
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        if requires_grad and not self.secret:
            raise ValueError("a trained parameter is secret (its updates depend on the data): "
                             "make_secret_() first")
        self.requires_grad = requires_grad
        return self

    def share(self) -> torch.Tensor:
        """This party's additive share of the value (for a public one: the encoding at party 0)."""
        return self.data if self.secret or self.ctx.rank == 0 else torch.zeros_like(self.data)

    def tensor(self) -> SharedTensor:
        return SharedTensor(self.ctx, self.share())

    def accumulate_grad(self, grad: torch.Tensor) -> None:
        self.grad = SharedTensor(self.ctx, grad if self.grad is None else self.grad.share + grad)

    def accumulate_grad_sample(self, sample) -> None:
        """Shares [batch, *shape] (also summed into grad), or factors (grad_sample.LinearFactors,
        asked for by grad_sample_factors) that are joined and left to their consumer: no grad."""
        if not isinstance(sample, torch.Tensor):
            self.grad_sample = sample if self.grad_sample is None else self.grad_sample.join(sample)
            return
        self.grad_sample = SharedTensor(self.ctx, sample if self.grad_sample is None
                                        else self.grad_sample.share + sample)
        self.accumulate_grad(sample.sum(0))


class Module:
    """Layers register Parameters and sub-Modules as attributes, as in torch.nn."""

    def __init__(self, ctx):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        self.ctx = ctx

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

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def named_modules(self, prefix: str = ""):
        yield prefix.rstrip("."), self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}{name}.")

    def modules(self):
        return [m for _, m in self.named_modules()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = p.grad_sample = None

    def track_per_example(self, enabled: bool = True) -> None:
        """Keep per-example gradients (`grad_sample`) of trained parameters (mpcft.nn.grad_sample)."""
        for p in self.trainable_parameters():
            p.grad_sample_enabled = enabled

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
