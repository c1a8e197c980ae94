"""Packed bit planes against plain Python bit manipulation."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcft.kernels import PRG
from mpcft.kernels.bits import compare_leaves, digit_planes, pack_bits, unpack_bits, words_for


@given(st.lists(st.integers(0, 1), max_size=300))
def test_pack_unpack_round_trip(bits):
    words = pack_bits(torch.tensor(bits, dtype=torch.int64))
    assert words.dtype == torch.int64 and words.numel() == words_for(len(bits))
    assert unpack_bits(words, len(bits)).tolist() == bits
    for i, b in enumerate(bits):  # element i is bit i % 64 of word i // 64
        assert (int(words[i // 64]) >> (i % 64)) & 1 == b


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 200), st.sampled_from([(1, 62), (4, 16), (4, 8), (8, 4)]))
def test_digit_planes_are_one_hot_digits(seed, count, layout):
    digit_bits, digits = layout
    values = PRG(seed).ring(count) & ((1 << 62) - 1)
    planes = digit_planes(values, digit_bits, digits)
    assert planes.shape == (digits, 1 << digit_bits, words_for(count))
    for g in range(digits):
        digit = (values >> (g * digit_bits)) & ((1 << digit_bits) - 1)
        for v in range(1 << digit_bits):
            assert torch.equal(unpack_bits(planes[g, v], count), (digit == v).long())


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 200), st.sampled_from([(4, 16), (4, 8), (2, 3)]))
def test_compare_leaves_from_xor_shares_of_planes(seed, count, layout):
    digit_bits, digits = layout
    prg = PRG(seed)
    mask = (1 << (digit_bits * digits)) - 1
    public, secret = prg.ring(count) & mask, prg.ring(count) & mask
    planes = digit_planes(secret, digit_bits, digits)
    share = prg.ring(planes.shape)          # two XOR shares of the planes
    lt0, eq0 = compare_leaves(public, share, digit_bits)
    lt1, eq1 = compare_leaves(public, planes ^ share, digit_bits)
    for g in range(digits):
        p = (public >> (g * digit_bits)) & ((1 << digit_bits) - 1)
        s = (secret >> (g * digit_bits)) & ((1 << digit_bits) - 1)
        assert torch.equal(unpack_bits(lt0[g] ^ lt1[g], count), (p < s).long())
        assert torch.equal(unpack_bits(eq0[g] ^ eq1[g], count), (p == s).long())
