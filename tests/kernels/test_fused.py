"""Fused kernels against Python-int arithmetic and their torch formulation, bit-exact."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcft.kernels import PRG
from mpcft.kernels.fused import trunc_reconstruct, trunc_reconstruct_torch

from .refs import MOD, signed


def python_reference(c, r_top, r_mid, bits, first):
    out = []
    for ci, ti, mi in zip(c.tolist(), r_top.tolist(), r_mid.tolist()):
        cu = ci % MOD
        c_top, c_low = cu >> 63, cu % 2**63
        u = ti * (1 - 2 * c_top) + (c_top if first else 0)
        y = u * 2 ** (63 - bits) - mi
        if first:
            y += (c_low >> bits) - 2 ** (62 - bits)
        out.append(signed(y))
    return out


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 61), st.booleans(), st.integers(1, 300))
def test_trunc_reconstruct_bit_exact(seed, bits, first, size):
    prg = PRG(seed)
    c, r_mid = prg.ring(size), prg.ring(size)
    r_top = prg.ring(size)  # any ring values: the kernel is a ring identity, not only for bits
    want = python_reference(c, r_top, r_mid, bits, first)
    assert trunc_reconstruct(c, r_top, r_mid, bits, first).tolist() == want
    assert trunc_reconstruct_torch(c, r_top, r_mid, bits, first).tolist() == want


def test_trunc_reconstruct_keeps_shape_and_accepts_views():
    prg = PRG(bytes(32))
    c = prg.ring((4, 6)).T  # non-contiguous
    r_top, r_mid = prg.bits((6, 4)), prg.ring((6, 4))
    out = trunc_reconstruct(c, r_top, r_mid, 20, True)
    assert out.shape == (6, 4)
    assert torch.equal(out, trunc_reconstruct_torch(c, r_top, r_mid, 20, True))
