"""SharedTensor: an n-party additive sharing of a fixed-point tensor, PyTorch-style.

Each party holds a torch int64 share; the shares sum (mod 2^64) to round(x * 2^f). Local
operations (shape changes, indexing, sums, additions, products with public integers) cost
nothing; products with public reals cost one truncation; shared x shared products cost a
Beaver exchange and a truncation. Nothing is revealed except by reveal() / reveal_to().
"""
import numbers

import numpy as np
import torch

from mpcft.protocols import (activations, beaver, comparison, exponential, reciprocal, sharing,
                             softmax)
from mpcft.protocols.truncation import truncate
from mpcft.kernels import ring_matmul


class SharedTensor:
    __array_priority__ = 1000  # numpy operands defer to our reflected operators

    def __init__(self, ctx, share: torch.Tensor):
        if not isinstance(share, torch.Tensor) or share.dtype != torch.int64:
            raise TypeError("a SharedTensor's share is a torch int64 tensor")
        self.ctx = ctx
        self.share = share

    # ----- input and output -------------------------------------------------------------
    @classmethod
    def from_plain(cls, ctx, value, owner: int = 0, shape=None) -> "SharedTensor":
        """Secret-share `value`, given by party `owner` (others pass None).

        Other parties pass the public shape, or None to receive it from the owner
        (one tiny extra message). Reveals the shape only.
        """
        announce = shape is None
        encoded = None
        if ctx.rank == owner:
            encoded = ctx.fp.encode(value if isinstance(value, torch.Tensor) else _as_tensor(value))
            shape = tuple(encoded.shape) if announce else shape
        if announce:
            shape = _broadcast_shape(ctx, shape, owner)
        return cls(ctx, sharing.share(ctx, encoded, owner, shape))

    def reveal(self) -> torch.Tensor:
        """Open to every party and decode (float64). One round."""
        return self.ctx.fp.decode(sharing.open_(self.ctx, self.share))

    def reveal_to(self, rank: int):
        """Open to party `rank` only (float64 there, None elsewhere). One round."""
        opened = sharing.open_to(self.ctx, self.share, rank)
        return None if opened is None else self.ctx.fp.decode(opened)

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
        return f"SharedTensor(shape={tuple(self.shape)}, party={self.ctx.rank}/{self.ctx.world_size})"

    def _wrap(self, share) -> "SharedTensor":
        return SharedTensor(self.ctx, share)

    def reshape(self, *shape):
        return self._wrap(self.share.reshape(*shape))

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return self._wrap(self.share.flatten(start_dim, end_dim))

    def transpose(self, dim0, dim1):
        return self._wrap(self.share.transpose(dim0, dim1))

    def permute(self, *dims):
        return self._wrap(self.share.permute(*dims))

    @property
    def T(self):
        return self._wrap(self.share.mT if self.ndim >= 2 else self.share)

    def unsqueeze(self, dim):
        return self._wrap(self.share.unsqueeze(dim))

    def squeeze(self, dim=None):
        return self._wrap(self.share.squeeze() if dim is None else self.share.squeeze(dim))

    def expand(self, *shape):
        return self._wrap(self.share.expand(*shape))

    def contiguous(self):
        return self._wrap(self.share.contiguous())

    def __getitem__(self, index):
        return self._wrap(self.share[index])

    def __setitem__(self, index, value):
        if not isinstance(value, SharedTensor):
            value = self._public_term(value, self.share[index].shape)
            self.share[index] = value
        else:
            self.share[index] = value.share

    # ----- linear operations (local) ------------------------------------------------------
    def _public_term(self, value, shape=None) -> torch.Tensor:
        """Party 0's share of the public value (encoded); zeros elsewhere."""
        encoded = self.ctx.fp.encode(_as_tensor(value))
        if self.ctx.rank != 0:
            encoded = torch.zeros_like(encoded)
        return encoded if shape is None else encoded.expand(shape)

    def __add__(self, other):
        if isinstance(other, SharedTensor):
            return self._wrap(self.share + other.share)
        return self._wrap(self.share + self._public_term(other))

    __radd__ = __add__

    def __neg__(self):
        return self._wrap(-self.share)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def sum(self, dim=None, keepdim=False):
        if dim is None:
            return self._wrap(self.share.sum())
        return self._wrap(self.share.sum(dim, keepdim=keepdim))

    def mean(self, dim=None, keepdim=False):
        """Sum, then multiply by the public 1/N (one truncation)."""
        count = self.numel() if dim is None else _count(self.shape, dim)
        return self.sum(dim, keepdim) * (1.0 / count)

    # ----- products ------------------------------------------------------------------------
    def __mul__(self, other):
        if isinstance(other, SharedTensor):
            return self._truncated(beaver.mul(self.ctx, self.share, other.share))
        if _is_integer(other):
            return self._wrap(self.share * int(other))
        return self._truncated(self.share * self.ctx.fp.encode(_as_tensor(other)))

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, SharedTensor):
            raise TypeError("division by a shared tensor needs the reciprocal protocol")
        return self * (1.0 / _as_tensor(other).double())

    def square(self):
        return self._truncated(beaver.square(self.ctx, self.share))

    def __matmul__(self, other):
        if isinstance(other, SharedTensor):
            return self._truncated(beaver.matmul(self.ctx, self.share, other.share))
        return self._truncated(ring_matmul(self.share, self.ctx.fp.encode(_as_tensor(other))))

    def __rmatmul__(self, other):
        return self._truncated(ring_matmul(self.ctx.fp.encode(_as_tensor(other)), self.share))

    def _truncated(self, product: torch.Tensor) -> "SharedTensor":
        return self._wrap(truncate(self.ctx, product))

    # ----- non-linear functions (protocols/ for their accuracy contracts) --------------------
    def relu(self, bits: int = 32):
        return self._wrap(comparison.relu(self.ctx, self.share, bits))

    def max(self, dim: int = -1, bits: int = 32):
        """Maximum over dim (kept with size 1)."""
        return self._wrap(comparison.max_along(self.ctx, self.share, dim, bits))

    def lt_zero(self, bits: int = 32):
        """[x < 0] as a SharedTensor of 0.0 / 1.0."""
        bits_ = comparison.sign_bit(self.ctx, self.share, bits)
        return self._wrap(bits_ << self.ctx.frac_bits)

    def exp(self, clamp: bool = False):
        return self._wrap(exponential.exp(self.ctx, self.share, clamp=clamp))

    def reciprocal(self, lo: float = 1e-2, hi: float = 1e4):
        return self._wrap(reciprocal.reciprocal(self.ctx, self.share, lo, hi))

    def rsqrt(self, lo: float = 1e-4, hi: float = 1e4):
        return self._wrap(reciprocal.inv_sqrt(self.ctx, self.share, lo, hi))

    def log(self, lo: float = 1e-4, hi: float = 1e4):
        return self._wrap(reciprocal.log(self.ctx, self.share, lo, hi))

    def gelu(self):
        return self._wrap(activations.gelu(self.ctx, self.share))

    def tanh(self):
        return self._wrap(activations.tanh(self.ctx, self.share))

    def sigmoid(self):
        return self._wrap(activations.sigmoid(self.ctx, self.share))

    def softmax(self, dim: int = -1, mask=None):
        x = self.share.movedim(dim, -1)
        return self._wrap(softmax.softmax(self.ctx, x, mask).movedim(-1, dim))


def cat(tensors, dim=0) -> SharedTensor:
    tensors = list(tensors)
    return SharedTensor(tensors[0].ctx, torch.cat([t.share for t in tensors], dim))


def stack(tensors, dim=0) -> SharedTensor:
    tensors = list(tensors)
    return SharedTensor(tensors[0].ctx, torch.stack([t.share for t in tensors], dim))


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
