"""Elementwise arithmetic in the ring Z_2^64.

A ring element is stored as an int64 in two's complement: the int64 value v stands for
v mod 2^64, and the same bits read as a signed number give the centred representative in
[-2^63, 2^63). Addition, subtraction, negation and multiplication of int64 arrays wrap
modulo 2^64 in numpy and torch (CPU and CUDA), so they are exactly the ring operations.

Every function takes numpy int64 arrays or torch int64 tensors (any device) and returns the
same kind; Python ints are accepted as public operands and reduced into the ring.
"""
import sys

import numba
import numpy as np
import torch

RING_BITS = 64
RING_SIZE = 1 << RING_BITS
_HALF = 1 << (RING_BITS - 1)


def to_ring(value: int) -> int:
    """The centred int64 representative of a Python int modulo 2^64."""
    return ((int(value) + _HALF) % RING_SIZE) - _HALF


def _operand(x):
    """An int64 array/tensor, or a Python int reduced into the ring."""
    if isinstance(x, (int, np.integer)):
        return to_ring(x)
    check_ring(x)
    return x


def check_ring(x) -> None:
    """Raise TypeError unless x is a numpy int64 array or a torch int64 tensor."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.int64:
            raise TypeError(f"ring tensors are torch.int64, got {x.dtype}")
    elif isinstance(x, np.ndarray):
        if x.dtype != np.int64:
            raise TypeError(f"ring arrays are numpy int64, got {x.dtype}")
    else:
        raise TypeError(f"expected a numpy int64 array or torch int64 tensor, got {type(x).__name__}")


def _wrapping(np_op, torch_op, a, b):
    a, b = _operand(a), _operand(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            raise TypeError("cannot mix numpy arrays and torch tensors in one ring operation")
        return torch_op(a, b)
    with np.errstate(over="ignore"):
        return np.asarray(np_op(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)))


def add(a, b):
    """a + b mod 2^64."""
    return _wrapping(np.add, torch.add, a, b)


def sub(a, b):
    """a - b mod 2^64."""
    return _wrapping(np.subtract, torch.sub, a, b)


def mul(a, b):
    """a * b mod 2^64 (elementwise, broadcasting)."""
    return _wrapping(np.multiply, torch.mul, a, b)


def neg(a):
    """-a mod 2^64."""
    check_ring(a)
    if isinstance(a, np.ndarray):
        with np.errstate(over="ignore"):
            return np.negative(a)
    return torch.neg(a)


def _check_shift(s: int) -> int:
    s = int(s)
    if not 0 <= s < RING_BITS:
        raise ValueError(f"shift must be in [0, 64), got {s}")
    return s


def lshift(x, s: int):
    """x * 2^s mod 2^64."""
    check_ring(x)
    s = _check_shift(s)
    if isinstance(x, np.ndarray):
        return (x.view(np.uint64) << np.uint64(s)).view(np.int64)
    return x << s


def rshift_arith(x, s: int):
    """floor(x / 2^s) with x read as a signed (centred) value."""
    check_ring(x)
    return x >> _check_shift(s)


def rshift_logical(x, s: int):
    """floor(x / 2^s) with x read as an unsigned value in [0, 2^64)."""
    check_ring(x)
    s = _check_shift(s)
    if isinstance(x, np.ndarray):
        return (x.view(np.uint64) >> np.uint64(s)).view(np.int64)
    if s == 0:
        return x.clone()
    return (x >> s) & ((1 << (RING_BITS - s)) - 1)


def bit(x, i: int):
    """Bit i of x (0 = least significant, 63 = sign bit) as an int64 0/1 array."""
    return rshift_logical(x, i) & 1


def msb(x):
    """The most significant bit of x: 1 where x, read as signed, is negative."""
    return bit(x, RING_BITS - 1)


def low_bits(x, s: int):
    """x mod 2^s as a non-negative int64, for 0 <= s < 64."""
    check_ring(x)
    return x & ((1 << _check_shift(s)) - 1)


_LITTLE_ENDIAN = sys.byteorder == "little"     # how an int64's bytes lie in memory


def low_bytes(x: torch.Tensor, width: int) -> torch.Tensor:
    """The low `width` bytes of each int64, least significant first, as a flat uint8 tensor."""
    width = _check_width(width)
    if x.device.type == "cpu":
        out = torch.empty(x.numel() * width, dtype=torch.uint8)
        _bytes(x.contiguous().numpy().reshape(-1), out.numpy(), width, _PACK)
        return out
    raw = x.contiguous().view(torch.uint8).reshape(-1, 8)
    low = raw[:, :width] if _LITTLE_ENDIAN else raw.flip(1)[:, :width]
    return low.contiguous().reshape(-1)


def join_low_bytes(data: torch.Tensor, width: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of low_bytes: int64 values from their low `width` bytes (higher bytes zero),
    written into `out` (a contiguous int64 tensor of as many elements) where given."""
    return _join(data, _check_width(width), out, _JOIN)


def add_low_bytes(out: torch.Tensor, data: torch.Tensor, width: int) -> torch.Tensor:
    """out += join_low_bytes(data, width), in one pass on the CPU; returns out."""
    return _join(data, _check_width(width), out, _ADD)


def sub_low_bytes(out: torch.Tensor, data: torch.Tensor, width: int) -> torch.Tensor:
    """out -= join_low_bytes(data, width), in one pass on the CPU; returns out."""
    return _join(data, _check_width(width), out, _SUB)


def _check_width(width) -> int:
    if not 1 <= int(width) <= 8:
        raise ValueError(f"a width of 1 to 8 bytes, got {width}")
    return int(width)


def _join(data, width, out, mode):
    numel = data.numel() // width
    if out is None:
        out = torch.empty(numel, dtype=torch.int64, device=data.device)
    elif out.dtype != torch.int64 or out.numel() != numel or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int64 tensor of {numel} elements")
    if data.device.type == "cpu" and out.device.type == "cpu":
        _bytes(out.numpy().reshape(-1), data.contiguous().numpy().reshape(-1), width, mode)
        return out
    raw = data.new_zeros(numel, 8)
    raw[:, :width] = data.reshape(-1, width)
    value = (raw if _LITTLE_ENDIAN else raw.flip(1)).contiguous().view(torch.int64).reshape(out.shape)
    if mode == _JOIN:
        return out.copy_(value)
    return (out.add_ if mode == _ADD else out.sub_)(value.to(out.device))


# One loop per width, so that each is unrolled and vectorised (about 10x the generic loop's speed).
_PACK, _JOIN, _ADD, _SUB = 0, 1, 2, 3    # data <- low bytes of values; values <- joined data, += it, -= it


@numba.njit(nogil=True, inline="always")
def _bytes_of_width(values, data, width, mode):
    if mode == _PACK:
        for k in range(values.size):
            v = values[k]
            for b in range(width):
                data[k * width + b] = (v >> (8 * b)) & 0xFF
        return
    for k in range(values.size):
        v = np.int64(0)
        for b in range(width):
            v |= np.int64(data[k * width + b]) << (8 * b)
        values[k] = values[k] + v if mode == _ADD else values[k] - v if mode == _SUB else v


@numba.njit(nogil=True, cache=True)
def _bytes(values, data, width, mode):
    if width == 1:
        _bytes_of_width(values, data, 1, mode)
    elif width == 2:
        _bytes_of_width(values, data, 2, mode)
    elif width == 3:
        _bytes_of_width(values, data, 3, mode)
    elif width == 4:
        _bytes_of_width(values, data, 4, mode)
    elif width == 5:
        _bytes_of_width(values, data, 5, mode)
    elif width == 6:
        _bytes_of_width(values, data, 6, mode)
    elif width == 7:
        _bytes_of_width(values, data, 7, mode)
    else:
        _bytes_of_width(values, data, 8, mode)
