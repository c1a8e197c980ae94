"""SharedTensor: an n-party additive sharing of a fixed-point tensor, PyTorch-style, with autograd.

Each party holds a torch int64 share; the shares sum (mod 2^64) to round(x * 2^s), s the
tensor's `frac_bits` (the context's f for reals, 0 for integers and 0/1 masks). Local
operations (shape changes, indexing, sums, additions, products with public integers) cost
nothing; products with public reals cost one truncation; shared x shared products cost a
Beaver exchange and a truncation (none when one side has scale 0). Nothing is revealed
except by reveal() / reveal_to().

Autograd: tensors made by differentiable operations (the arithmetic here and the fused
Functions of mpcft.nn.functional) record how they were made when an input requires a
gradient; `loss.backward()` propagates shares of the gradients (mpcft.autograd). Gradients
exist for fixed-point tensors (scale f) only.
"""
import numbers

import numpy as np
import torch

from mpcft.autograd import Node, is_grad_enabled, run_backward
from mpcft.kernels import FixedPoint, ring_matmul
from mpcft.protocols import (activations, beaver, comparison, exponential, fixed, reciprocal, sharing,
                             softmax)
from mpcft.protocols.truncation import truncate


class SharedTensor:
    __array_priority__ = 1000  # numpy operands defer to our reflected operators

    def __init__(self, ctx, share: torch.Tensor, frac_bits: int | None = None,
                 requires_grad: bool = False):
        if not isinstance(share, torch.Tensor) or share.dtype != torch.int64:
            raise TypeError("a SharedTensor's share is a torch int64 tensor")
        self.ctx = ctx
        self.share = share
        self.frac_bits = ctx.frac_bits if frac_bits is None else int(frac_bits)
        self.grad = None
        self.grad_fn = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_()

    # ----- input and output -------------------------------------------------------------
    @classmethod
    def from_plain(cls, ctx, value, owner: int = 0, shape=None, frac_bits: int | None = None,
                   requires_grad: bool = False) -> "SharedTensor":
        """Secret-share `value`, given by party `owner` (others pass None), encoded with
        `frac_bits` fractional bits (default the context's f; 0 for integers and masks).

        Other parties pass the public shape, or None to receive it from the owner
        (one tiny extra message). Reveals the shape only.
        """
        bits = ctx.frac_bits if frac_bits is None else frac_bits
        announce = shape is None
        encoded = None
        if ctx.rank == owner:
            encoded = FixedPoint(bits).encode(_as_tensor(value)).to(ctx.device)
            shape = tuple(encoded.shape) if announce else shape
        if announce:
            shape = _broadcast_shape(ctx, shape, owner)
        return cls(ctx, sharing.share(ctx, encoded, owner, shape), bits, requires_grad)

    def reveal(self) -> torch.Tensor:
        """Open to every party and decode (float64). One round."""
        return self._decode(sharing.open_(self.ctx, self.share))

    def reveal_to(self, rank: int):
        """Open to party `rank` only (float64 there, None elsewhere). One round."""
        opened = sharing.open_to(self.ctx, self.share, rank)
        return None if opened is None else self._decode(opened)

    def _decode(self, opened: torch.Tensor) -> torch.Tensor:
        return opened.to(torch.float64) / 2.0 ** self.frac_bits

    # ----- autograd -----------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> "SharedTensor":
        if requires_grad and self.frac_bits != self.ctx.frac_bits:
            raise TypeError(f"only fixed-point tensors (scale 2^{self.ctx.frac_bits}) have gradients, "
                            f"this one has scale 2^{self.frac_bits}")
        self.requires_grad = requires_grad
        return self

    def detach(self) -> "SharedTensor":
        return SharedTensor(self.ctx, self.share, self.frac_bits)

    def backward(self, gradient=None) -> None:
        """Shares of d(self)/d(leaf) into every leaf's `.grad`. `gradient`: d out / d self, a
        SharedTensor or a public number (default 1; a public integer such as a loss scale
        multiplies exactly)."""
        if self.grad_fn is None:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if gradient is None:
            gradient = 1.0
        if isinstance(gradient, SharedTensor):
            gradient = gradient.share
        elif not self.grad_fn.function.public_grad:
            gradient = self.ctx.public(gradient, self.shape)
        run_backward(self.grad_fn, gradient)

    def accumulate_grad(self, grad: torch.Tensor) -> None:
        grad = grad if grad.shape == self.shape else grad.sum_to_size(self.shape)
        self.grad = SharedTensor(self.ctx, grad) if self.grad is None else \
            SharedTensor(self.ctx, self.grad.share + grad)

    def _no_autograd(self, name: str) -> None:
        if self.requires_grad and is_grad_enabled():
            raise RuntimeError(f"SharedTensor.{name} is not differentiable: use it under no_grad() "
                               f"or on a tensor that does not require grad")

    # ----- shape ------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    @property
    def ndim(self) -> int:
        return self.share.ndim

    def numel(self) -> int:
        return self.share.numel()

    def size(self, dim=None):
        return self.share.size() if dim is None else self.share.size(dim)

    def __len__(self):
        return len(self.share)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return (f"SharedTensor(shape={tuple(self.shape)}, frac_bits={self.frac_bits}{grad}, "
                f"party={self.ctx.rank}/{self.ctx.world_size})")

    def reshape(self, *shape):
        return Reshape.apply(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return self.reshape(self.share.flatten(start_dim, end_dim).shape)

    def unsqueeze(self, dim):
        return self.reshape(self.share.unsqueeze(dim).shape)

    def squeeze(self, dim=None):
        return self.reshape((self.share.squeeze() if dim is None else self.share.squeeze(dim)).shape)

    def permute(self, *dims):
        return Permute.apply(self, tuple(dims[0]) if len(dims) == 1 and not isinstance(dims[0], int) else dims)

    def transpose(self, dim0, dim1):
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(*dims)

    @property
    def T(self):
        return self.transpose(-2, -1) if self.ndim >= 2 else self

    def expand(self, *shape):
        self._no_autograd("expand")
        return self._wrap(self.share.expand(*shape))

    def contiguous(self):
        return self if self.share.is_contiguous() else Reshape.apply(self, self.shape)

    def __getitem__(self, index):
        return Index.apply(self, index)

    def __setitem__(self, index, value):
        self._no_autograd("__setitem__")
        if isinstance(value, SharedTensor):
            self.share[index] = _aligned(value, self.frac_bits).share
        else:
            self.share[index] = self._public_term(value, self.share[index].shape)

    def _wrap(self, share) -> "SharedTensor":
        return SharedTensor(self.ctx, share, self.frac_bits)

    # ----- linear operations (local) ------------------------------------------------------
    def _public_term(self, value, shape=None) -> torch.Tensor:
        """This party's share of the public value at this tensor's scale (party 0 holds it)."""
        return self.ctx.public(_as_tensor(value), shape, self.frac_bits)

    def __add__(self, other):
        if isinstance(other, SharedTensor):
            bits = max(self.frac_bits, other.frac_bits)
            return Add.apply(_aligned(self, bits), _aligned(other, bits))
        return AddPublic.apply(self, self._public_term(other))

    __radd__ = __add__

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def sum(self, dim=None, keepdim=False):
        return Sum.apply(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        """Sum, then multiply by the public 1/N (one truncation)."""
        count = self.numel() if dim is None else _count(self.shape, dim)
        return self.sum(dim, keepdim) * (1.0 / count)

    # ----- products ------------------------------------------------------------------------
    def __mul__(self, other):
        if isinstance(other, SharedTensor):
            return Mul.apply(self, other)
        if _is_integer(other):
            return MulInteger.apply(self, int(other))
        return MulPublic.apply(self, _as_tensor(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, SharedTensor):
            raise TypeError("division by a shared tensor needs the reciprocal protocol")
        return self * (1.0 / _as_tensor(other).double())

    def square(self):
        self._no_autograd("square")
        return self._wrap(truncate(self.ctx, beaver.square(self.ctx, self.share), self.frac_bits))

    def __matmul__(self, other):
        if isinstance(other, SharedTensor):
            return MatMul.apply(self, other)
        return MatMulPublic.apply(self, _as_tensor(other), False)

    def __rmatmul__(self, other):
        return MatMulPublic.apply(self, _as_tensor(other), True)

    # ----- non-linear functions (protocols/ for their accuracy contracts) --------------------
    def _nonlinear(self, name, protocol, *args, **kwargs):
        self._no_autograd(name)
        if self.frac_bits != self.ctx.frac_bits:
            raise TypeError(f"SharedTensor.{name} takes fixed-point tensors (scale 2^{self.ctx.frac_bits})")
        return self._wrap(protocol(self.ctx, self.share, *args, **kwargs))

    def relu(self, bits: int = 32):
        return self._nonlinear("relu", comparison.relu, bits)

    def max(self, dim: int = -1, bits: int = 32):
        """Maximum over dim (kept with size 1)."""
        return self._nonlinear("max", comparison.max_along, dim, bits)

    def lt_zero(self, bits: int = 32):
        """[x < 0] as a SharedTensor of 0 / 1 integers (scale 1)."""
        self._no_autograd("lt_zero")
        return SharedTensor(self.ctx, comparison.sign_bit(self.ctx, self.share, bits), 0)

    def exp(self, clamp: bool = False):
        return self._nonlinear("exp", exponential.exp, clamp=clamp)

    def reciprocal(self, lo: float = 1e-2, hi: float = 1e4):
        return self._nonlinear("reciprocal", reciprocal.reciprocal, lo, hi)

    def rsqrt(self, lo: float = 1e-4, hi: float = 1e4):
        return self._nonlinear("rsqrt", reciprocal.inv_sqrt, lo, hi)

    def log(self, lo: float = 1e-4, hi: float = 1e4):
        return self._nonlinear("log", reciprocal.log, lo, hi)

    def gelu(self):
        """GELU(x) (mpcft.nn.functional.gelu is the differentiable one)."""
        return self._nonlinear("gelu", activations.gelu)

    def tanh(self):
        return self._nonlinear("tanh", activations.tanh)

    def sigmoid(self):
        return self._nonlinear("sigmoid", activations.sigmoid)

    def softmax(self, dim: int = -1, mask=None):
        self._no_autograd("softmax")
        x = self.share.movedim(dim, -1)
        return self._wrap(softmax.softmax(self.ctx, x, mask).movedim(-1, dim))


class FunctionContext:
    """What a Function's forward leaves for its backward: the MPC context, which inputs need a
    gradient (`needs_input_grad`, as in torch), the inputs' scales (`input_bits`), the output's
    scale (`frac_bits`, f unless forward sets it) and whatever forward stores on it."""

    def __init__(self, mpc, needs_input_grad: tuple):
        self.mpc = mpc
        self.needs_input_grad = needs_input_grad
        self.frac_bits = mpc.frac_bits       # the output's scale


class Function:
    """A differentiable operation on shares, as torch.autograd.Function: `forward(fctx, *args)`
    gets raw int64 shares for SharedTensor arguments (Parameters and options as they are) and
    returns the output's share; `backward(fctx, grad)` gets the output gradient's share and
    returns one gradient share (or None) per argument. Forward and backward are each fused
    as the protocols fuse rounds. `public_grad`: backward accepts a public number as grad.
    Each forward runs in the session's comm region "<Name>.forward", each backward in
    "<Name>.backward" (mpcft.autograd), so traffic and time are counted per operation."""

    public_grad = False

    @classmethod
    def apply(cls, *args):
        carriers = [a for a in args if hasattr(a, "ctx") and hasattr(a, "requires_grad")]
        ctx = carriers[0].ctx
        enabled = is_grad_enabled()
        needs = tuple(enabled and bool(getattr(a, "requires_grad", False)) for a in args)
        fctx = FunctionContext(ctx, needs)
        fctx.input_bits = tuple(a.frac_bits if isinstance(a, SharedTensor) else None for a in args)
        with ctx.session.comm.region(f"{cls.__name__}.forward"):
            share = cls.forward(fctx, *(a.share if isinstance(a, SharedTensor) else a for a in args))
        out = SharedTensor(ctx, share, fctx.frac_bits)
        if any(needs):
            out.requires_grad = True
            out.grad_fn = Node(cls, fctx, [a if need else None for a, need in zip(args, needs)])
        return out

    @staticmethod
    def forward(fctx, *args):
        raise NotImplementedError

    @staticmethod
    def backward(fctx, grad):
        raise NotImplementedError


# ----- the differentiable local operations and products of SharedTensor ---------------------------
class Reshape(Function):
    @staticmethod
    def forward(fctx, x, shape):
        fctx.frac_bits, fctx.shape = _scale_of(fctx), x.shape
        return x.reshape(shape).contiguous()

    @staticmethod
    def backward(fctx, grad):
        return grad.reshape(fctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(fctx, x, dims):
        fctx.frac_bits, fctx.inverse = _scale_of(fctx), tuple(int(i) for i in np.argsort([d % x.ndim for d in dims]))
        return x.permute(dims)

    @staticmethod
    def backward(fctx, grad):
        return grad.permute(fctx.inverse), None


class Index(Function):
    """x[index]: backward scatters the gradient back (summing repeated tensor indices)."""

    @staticmethod
    def forward(fctx, x, index):
        fctx.frac_bits, fctx.shape, fctx.index = _scale_of(fctx), x.shape, index
        return x[index]

    @staticmethod
    def backward(fctx, grad):
        full = torch.zeros(fctx.shape, dtype=grad.dtype, device=grad.device)
        items = fctx.index if isinstance(fctx.index, tuple) else (fctx.index,)
        if any(isinstance(i, (torch.Tensor, list, np.ndarray)) for i in items):
            full.index_put_(tuple(torch.as_tensor(i) for i in items), grad, accumulate=True)
        else:
            full[fctx.index] = grad
        return full, None


class Add(Function):
    @staticmethod
    def forward(fctx, x, y):
        fctx.frac_bits = _scale_of(fctx)
        fctx.shapes = x.shape, y.shape
        return x + y

    @staticmethod
    def backward(fctx, grad):
        return tuple(grad.sum_to_size(s) if grad.shape != s else grad for s in fctx.shapes)


class AddPublic(Function):
    @staticmethod
    def forward(fctx, x, public):
        fctx.frac_bits, fctx.shape = _scale_of(fctx), x.shape
        return x + public

    @staticmethod
    def backward(fctx, grad):
        return (grad.sum_to_size(fctx.shape) if grad.shape != fctx.shape else grad), None


class Sum(Function):
    @staticmethod
    def forward(fctx, x, dim, keepdim):
        fctx.frac_bits, fctx.shape, fctx.dim, fctx.keepdim = _scale_of(fctx), x.shape, dim, keepdim
        return x.sum() if dim is None else x.sum(dim, keepdim=keepdim)

    @staticmethod
    def backward(fctx, grad):
        if fctx.dim is not None and not fctx.keepdim:
            for d in sorted(d % len(fctx.shape) for d in ([fctx.dim] if isinstance(fctx.dim, int) else fctx.dim)):
                grad = grad.unsqueeze(d)
        return grad.expand(fctx.shape).contiguous(), None, None


class MulInteger(Function):
    """x * k for a public integer k: exact, local."""

    @staticmethod
    def forward(fctx, x, k):
        fctx.frac_bits, fctx.k = _scale_of(fctx), k
        return x * k

    @staticmethod
    def backward(fctx, grad):
        return grad * fctx.k, None


class MulPublic(Function):
    """x * c for public reals c: local product, one truncation each way."""

    @staticmethod
    def forward(fctx, x, c):
        fctx.frac_bits, fctx.shape = _scale_of(fctx), x.shape
        fctx.c = fctx.mpc.fp.encode(c).to(x.device)
        return truncate(fctx.mpc, x * fctx.c)

    @staticmethod
    def backward(fctx, grad):
        g = truncate(fctx.mpc, grad * fctx.c)
        return (g.sum_to_size(fctx.shape) if g.shape != fctx.shape else g), None


class _SharedProduct(Function):
    """A bilinear product of shared x and y: one Beaver round, and a truncation unless a side
    has scale 1. Subclasses give the product and its two adjoints."""

    @classmethod
    def forward(cls, fctx, x, y):
        bx, by = fctx.input_bits
        fctx.frac_bits, fctx.x, fctx.y = max(bx, by), x, y
        return cls.truncated(fctx.mpc, x, y, min(bx, by))

    @classmethod
    def backward(cls, fctx, grad):
        mpc, (bx, by) = fctx.mpc, fctx.input_bits
        gx = gy = None
        if fctx.needs_input_grad[0]:
            gx = cls.adjoint_x(mpc, grad, fctx.x, fctx.y, by)
        if fctx.needs_input_grad[1]:
            gy = cls.adjoint_y(mpc, grad, fctx.x, fctx.y, bx)
        return gx, gy

    @classmethod
    def truncated(cls, mpc, x, y, bits):
        return _truncated(mpc, cls.product(mpc, x, y), bits)


class Mul(_SharedProduct):
    """x * y (broadcasting): dx = g y, dy = g x, summed over broadcast dimensions."""
    product = staticmethod(beaver.mul)

    @classmethod
    def truncated(cls, mpc, x, y, bits):        # the product formed inside the truncation's pass
        return fixed.mul_truncated(mpc, x, y, bits) if bits else beaver.mul(mpc, x, y)

    @classmethod
    def adjoint_x(cls, mpc, grad, x, y, bits):
        return cls._adjoint(mpc, grad, y, x.shape, bits)

    @classmethod
    def adjoint_y(cls, mpc, grad, x, y, bits):
        return cls._adjoint(mpc, grad, x, y.shape, bits)

    @classmethod
    def _adjoint(cls, mpc, grad, factor, shape, bits):
        """grad * factor summed to `shape`, truncated by `bits` after the sum."""
        if grad.shape == factor.shape == shape:
            return cls.truncated(mpc, grad, factor, bits)
        return _truncated(mpc, beaver.mul(mpc, grad, factor).sum_to_size(shape), bits)


class MatMul(_SharedProduct):
    """x @ y: dx = g y^T, dy = x^T g."""
    product = staticmethod(beaver.matmul)

    @staticmethod
    def adjoint_x(mpc, grad, x, y, bits):
        return _truncated(mpc, beaver.matmul(mpc, grad, y.mT.contiguous()), bits)

    @staticmethod
    def adjoint_y(mpc, grad, x, y, bits):
        return _truncated(mpc, beaver.matmul(mpc, x.mT.contiguous(), grad), bits)


class MatMulPublic(Function):
    """x @ P (or P @ x when `left`) for a public real matrix P: local, one truncation."""

    @staticmethod
    def forward(fctx, x, p, left):
        fctx.frac_bits, fctx.left = _scale_of(fctx), left
        fctx.p = fctx.mpc.fp.encode(p).to(x.device)
        product = ring_matmul(fctx.p, x) if left else ring_matmul(x, fctx.p)
        return truncate(fctx.mpc, product)

    @staticmethod
    def backward(fctx, grad):
        p = fctx.p.mT.contiguous()
        return truncate(fctx.mpc, ring_matmul(p, grad) if fctx.left else ring_matmul(grad, p)), None, None


def _scale_of(fctx) -> int:
    """The scale of a local operation's output: its first input's."""
    return fctx.input_bits[0]


def _truncated(ctx, product: torch.Tensor, shift: int) -> torch.Tensor:
    return truncate(ctx, product, shift) if shift else product


def _aligned(x: SharedTensor, bits: int) -> SharedTensor:
    """x at scale 2^bits >= its own (an exact local shift)."""
    if x.frac_bits == bits:
        return x
    if x.requires_grad:
        raise TypeError("only fixed-point tensors have gradients")
    return SharedTensor(x.ctx, x.share << (bits - x.frac_bits), bits)


def cat(tensors, dim=0) -> SharedTensor:
    tensors = list(tensors)
    for t in tensors:
        t._no_autograd("cat")
    bits = max(t.frac_bits for t in tensors)
    return SharedTensor(tensors[0].ctx, torch.cat([_aligned(t, bits).share for t in tensors], dim), bits)


def stack(tensors, dim=0) -> SharedTensor:
    tensors = list(tensors)
    for t in tensors:
        t._no_autograd("stack")
    bits = max(t.frac_bits for t in tensors)
    return SharedTensor(tensors[0].ctx, torch.stack([_aligned(t, bits).share for t in tensors], dim), bits)


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(shape, dim) -> int:
    dims = [dim] if isinstance(dim, int) else list(dim)
    return int(np.prod([shape[d] for d in dims]))


def _broadcast_shape(ctx, shape, owner: int) -> tuple:
    """The owner tells everybody its input's shape (public metadata, one small message)."""
    message = torch.tensor(list(shape) if ctx.rank == owner else [], dtype=torch.int64)
    received = ctx.session.broadcast(message if ctx.rank == owner else None, owner,
                                     dtype=torch.int64, shape=(None,))
    return tuple(received.tolist())
