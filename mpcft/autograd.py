"""The tape of reverse-mode autograd on shares: grad mode, graph nodes, the backward walk.

A differentiable operation (mpcft.tensor.Function) runs its fused forward on shares and,
when grad mode is on and an input requires a gradient, records a Node: the function, what
its forward saved, and the inputs that need gradients. backward() visits the Nodes reachable
from the root in reverse order of creation, a topological order (a Node's inputs were made
before it) that is the same at every party, so all parties run the same protocol sequence.
Each Node is released once visited; under `no_grad()` nothing is recorded or kept alive.
A Node's backward (and grad sampler) runs in the session's comm region "<Function>.backward".

Per-example gradients: a grad sampler registered for a Function type computes, from the
Node's saved tensors and its output gradient, one gradient per example for the parameters
that ask for them (`grad_sample_enabled`), as Opacus registers samplers per layer type.
Grad mode is per thread, as in torch, so party threads in one process keep their own.
"""
import itertools
import threading

_mode = threading.local()
_sequence = itertools.count()
GRAD_SAMPLERS: dict = {}


def is_grad_enabled() -> bool:
    return getattr(_mode, "enabled", True)


class no_grad:
    """`with no_grad():` run forward passes without recording anything for backward."""

    def __enter__(self):
        self._previous = is_grad_enabled()
        _mode.enabled = False
        return self

    def __exit__(self, *exc):
        _mode.enabled = self._previous
        return False


def register_grad_sampler(function_type):
    """Decorator: `sampler(fctx, grad) -> {input index: per-example gradient [batch, ...]}`."""
    def register(sampler):
        GRAD_SAMPLERS[function_type] = sampler
        return sampler
    return register


class Node:
    """One recorded operation. `inputs[i]` is the i-th argument if it requires a gradient
    (a SharedTensor or a Parameter), else None."""

    __slots__ = ("function", "fctx", "inputs", "order")

    def __init__(self, function, fctx, inputs):
        self.function, self.fctx, self.inputs = function, fctx, inputs
        self.order = next(_sequence)

    def gradients(self, grad):
        """The inputs' gradients (raw shares or None), per-example ones handed to their parameters."""
        if self.fctx is None:
            raise RuntimeError("backward through this graph a second time: its saved tensors are freed")
        with self.fctx.mpc.session.comm.region(f"{self.function.__name__}.backward"):
            return self._gradients(grad)

    def _gradients(self, grad):
        sampled = [i for i, x in enumerate(self.inputs) if getattr(x, "grad_sample_enabled", False)]
        if sampled:
            sampler = GRAD_SAMPLERS.get(self.function)
            if sampler is None:
                raise NotImplementedError(f"no grad sampler is registered for {self.function.__name__}")
            for i, sample in sampler(self.fctx, grad).items():
                if i in sampled:
                    self.inputs[i].accumulate_grad_sample(sample)
            self.fctx.needs_input_grad = tuple(need and i not in sampled
                                               for i, need in enumerate(self.fctx.needs_input_grad))
        return self.function.backward(self.fctx, grad)


def run_backward(root_node: Node, grad) -> None:
    """Propagate `grad` (shares of d out / d root, or a public number for the root) to every
    input that requires a gradient: leaves accumulate it in `.grad`."""
    nodes, stack, seen = [], [root_node], {id(root_node)}
    while stack:
        node = stack.pop()
        nodes.append(node)
        for x in node.inputs or ():
            parent = getattr(x, "grad_fn", None)
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    pending = {id(root_node): grad}
    for node in sorted(nodes, key=lambda n: n.order, reverse=True):
        grad = pending.pop(id(node), None)
        if grad is None:
            continue
        grads = node.gradients(grad)
        for x, g in zip(node.inputs, grads):
            if x is None or g is None:
                continue
            parent = getattr(x, "grad_fn", None)
            if parent is None:
                x.accumulate_grad(g)
            else:
                pending[id(parent)] = g if id(parent) not in pending else pending[id(parent)] + g
        node.fctx = node.inputs = None      # release what forward saved
