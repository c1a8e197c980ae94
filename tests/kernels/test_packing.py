"""Bit packing (kernels.packing) against a Python-int reference, bit-exact, on both paths
(Numba on the CPU, torch elsewhere: run here on CPU tensors)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpcft.kernels import packing
from mpcft.kernels.packing import add_unpacked, pack_low_bits, packed_bytes, unpack_low_bits

from .refs import MOD, as_ints

int64s = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -2**63, 2**46 - 1, 2**46]),
                   st.integers(-2**63, 2**63 - 1))
vectors = hnp.arrays(np.int64, st.integers(0, 40), elements=int64s)


def reference(values: list, bits: int) -> list:
    """The bytes of sum_i (v_i mod 2^bits) 2^(i bits), little-endian, in whole 64-bit words."""
    stream = sum((v % (1 << bits)) << (i * bits) for i, v in enumerate(values))
    return list(stream.to_bytes(packed_bytes(len(values), bits), "little"))


@settings(deadline=None)
@given(vectors, st.integers(1, 64))
def test_packing_matches_python_ints_and_unpacks_back(a, bits):
    x = torch.from_numpy(a)
    values = as_ints(a).tolist()
    packed = pack_low_bits(x, bits)
    assert packed.dtype == torch.uint8 and packed.tolist() == reference(values, bits)
    want = [v % (1 << bits) for v in values]
    assert [v % MOD for v in unpack_low_bits(packed, len(values), bits).tolist()] == want
    if bits % 8:                                            # the torch path gives the same
        words = -(-len(values) * bits // 64)
        assert packing._pack_torch(x, bits, words).view(torch.uint8).tolist() == packed.tolist()
        assert [v % MOD for v in packing._unpack_torch(packed.view(torch.int64), len(values), bits).tolist()] == want


@settings(deadline=None)
@given(vectors, st.integers(1, 64))
def test_unpacking_adds_in_the_ring_and_writes_in_place(a, bits):
    x = torch.from_numpy(a)
    base = torch.arange(len(a), dtype=torch.int64) * (2**61 + 3)
    out = base.clone()
    assert unpack_low_bits(pack_low_bits(x, bits), len(a), bits, out=out, add=True).data_ptr() == out.data_ptr()
    want = [(u + v % (1 << bits)) % MOD for u, v in zip(as_ints(base.numpy()).tolist(), as_ints(a).tolist())]
    assert [v % MOD for v in out.tolist()] == want


@settings(deadline=None)
@given(st.integers(0, 40), st.integers(1, 64), st.integers(0, 3), st.integers(0, 63),
       st.binary(min_size=8, max_size=8), st.booleans())
def test_add_unpacked_is_the_shifted_ring_sum_of_low_bits(size, bits, peers, shift, seed, words_order):
    gen = torch.Generator().manual_seed(int.from_bytes(seed, "little"))
    own, *others = (torch.randint(-2**63, 2**63 - 1, (size,), generator=gen) for _ in range(peers + 1))
    want = [(sum(v) % (1 << bits) << shift) % MOD for v in zip(*(as_ints(t.numpy()).tolist() for t in [own] + others))]
    if not words_order:        # the path that does not read packed bytes as 64-bit words
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(packing.sys, "byteorder", "big")
            got = add_unpacked(own, [pack_low_bits(t, bits) for t in others], bits, shift)
    else:                      # own given as a strided view
        got = add_unpacked(torch.stack([own, own], 1)[:, 0], [pack_low_bits(t, bits) for t in others], bits, shift)
    assert [v % MOD for v in got.tolist()] == want


def test_add_unpacked_refuses_a_wrong_length_or_shift():
    own = torch.arange(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="take 24 bytes"):
        add_unpacked(own, [pack_low_bits(own, 13)[:-8]], 13)
    with pytest.raises(ValueError, match="shift"):
        add_unpacked(own, [pack_low_bits(own, 13)], 13, 64)


def test_packing_refuses_bad_widths_lengths_and_outputs():
    x = torch.arange(10, dtype=torch.int64)
    for bits in (0, 65, True):
        with pytest.raises(ValueError, match="bits"):
            pack_low_bits(x, bits)
    packed = pack_low_bits(x, 13)
    assert packed.numel() == 24                              # 130 bits: 3 words
    with pytest.raises(ValueError, match="take 24 bytes"):
        unpack_low_bits(packed[:-1], 10, 13)
    with pytest.raises(ValueError, match="out must be"):
        unpack_low_bits(packed, 10, 13, out=torch.zeros(9, dtype=torch.int64))
    with pytest.raises(ValueError, match="add=True"):
        unpack_low_bits(packed, 10, 13, add=True)
