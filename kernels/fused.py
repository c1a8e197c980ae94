"""Fused elementwise ring kernels for the local phases of protocols (Numba, parallel).

Each replaces a chain of torch/numpy passes over large share tensors with one pass; all
arithmetic wraps modulo 2^64 exactly as int64 does. CPU arrays go through Numba; other
devices use the equivalent torch expression.
"""
import numba
import numpy as np
import torch

from .ring import RING_BITS, low_bits, msb, rshift_logical

_MASK63 = (1 << 63) - 1


@numba.njit(parallel=True, nogil=True, cache=True)
def _trunc_reconstruct(c, r_top, r_mid, bits, first, out):
    offset = np.int64(1) << (RING_BITS - 2 - bits)
    for i in numba.prange(c.size):
        ci = c[i]
        c_top = (ci >> 63) & 1
        u = r_top[i] * (1 - 2 * c_top)
        y = -r_mid[i]
        if first:
            u += c_top
            y += ((ci & _MASK63) >> bits) - offset
        out[i] = y + (u << (RING_BITS - 1 - bits))


def trunc_reconstruct(c, r_top, r_mid, bits: int, first: bool):
    """Local step of truncation (protocols/truncation.py) from the opened c and dealer shares.

    y = 2^(63-bits) * u - r_mid (+ (c_low >> bits) - 2^(62-bits) at the first party), with
    u = r_top XOR c_top computed on shares. All operands have c's shape.
    """
    if c.device.type != "cpu":
        return trunc_reconstruct_torch(c, r_top, r_mid, bits, first)
    out = torch.empty(c.shape, dtype=torch.int64)
    _trunc_reconstruct(*(t.contiguous().numpy().reshape(-1) for t in (c, r_top, r_mid)),
                       bits, first, out.numpy().reshape(-1))
    return out


def trunc_reconstruct_torch(c, r_top, r_mid, bits: int, first: bool):
    """trunc_reconstruct as torch operations (any device)."""
    c_top, c_low = msb(c), low_bits(c, RING_BITS - 1)
    u = r_top * (1 - 2 * c_top) + (c_top if first else 0)
    y = (u << (RING_BITS - 1 - bits)) - r_mid
    return y + (rshift_logical(c_low, bits) - (1 << (RING_BITS - 2 - bits)) if first else 0)
