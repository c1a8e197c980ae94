"""Optimizers on secret-shared parameters.

SGD with momentum: v <- mu v + g, w <- w - lr v, g including weight decay wd w. Gradients may
arrive scaled by a public grad_scale S (loss scaling); lr / S is then applied with log2(S)
extra fractional bits so that nothing of the scaling's precision is lost. All parameters are updated together:
their flattened shares are concatenated so that each public-coefficient product costs one
truncation round for the whole model (2 rounds per step, 8 bytes per parameter per peer each).
"""
import torch

from mpcft.protocols import fixed


class SGD:
    def __init__(self, parameters, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 grad_scale: int = 1):
        self.params = [p for p in parameters if p.trainable]
        if not self.params:
            raise ValueError("SGD got no trainable parameters")
        self.ctx = self.params[0].ctx
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.grad_scale = int(grad_scale)
        self._extra_bits = max(0, self.grad_scale.bit_length() - 1)
        self.velocity = None

    def _flat(self, tensors):
        return torch.cat([t.reshape(-1) for t in tensors])

    def step(self) -> None:
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise RuntimeError(f"parameters {missing} have no gradient: call backward() first")
        ctx = self.ctx
        grad = self._flat([p.grad for p in self.params])
        weights = self._flat([p.data for p in self.params])
        if self.weight_decay:
            grad = grad + fixed.mul_public(ctx, weights, self.weight_decay * self.grad_scale)
        if self.momentum and self.velocity is not None:
            self.velocity = fixed.mul_public(ctx, self.velocity, self.momentum) + grad
        else:
            self.velocity = grad
        weights = weights - fixed.mul_public(ctx, self.velocity, self.lr / self.grad_scale,
                                             extra_bits=self._extra_bits)
        start = 0
        for p in self.params:
            p.data = weights[start:start + p.data.numel()].reshape(p.shape)
            start += p.data.numel()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = p.grad_sample = None
