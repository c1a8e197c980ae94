"""Packed bit planes: 64 elements' bits per int64 word (element i is bit i % 64 of word i // 64).

Binary (XOR) shares of N bits are kept as ceil(N / 64) words, so a binary AND or XOR of
64 elements is one word operation and opening N bits sends N / 8 bytes.
"""
import numba
import numpy as np
import torch


def words_for(count: int) -> int:
    return -(-int(count) // 64)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 tensor (any shape, read flat) -> int64 words, zero-padded to a multiple of 64."""
    flat = bits.reshape(-1).to(torch.uint8).cpu().numpy()
    packed = np.packbits(flat, bitorder="little")
    padded = np.zeros(words_for(flat.size) * 8, np.uint8)
    padded[:packed.size] = packed
    return torch.from_numpy(padded.view(np.int64)).to(bits.device)


def unpack_bits(words: torch.Tensor, count: int) -> torch.Tensor:
    """int64 words -> the first `count` bits as a flat 0/1 int64 tensor."""
    raw = words.contiguous().cpu().numpy().view(np.uint8)
    bits = np.unpackbits(raw, count=count, bitorder="little").astype(np.int64)
    return torch.from_numpy(bits).to(words.device)


@numba.njit(parallel=True, nogil=True, cache=True)
def _digit_planes(values, digit_bits, digits, out):
    mask = (np.int64(1) << digit_bits) - 1
    words = out.shape[2]
    for w in numba.prange(words):
        start = w * 64
        stop = min(start + 64, values.size)
        acc = np.zeros(1 << digit_bits, np.int64)
        for g in range(digits):
            acc[:] = 0
            for i in range(start, stop):
                d = (values[i] >> (g * digit_bits)) & mask
                acc[d] |= np.int64(1) << (i - start)
            for v in range(1 << digit_bits):
                out[g, v, w] = acc[v]


def digit_planes(values: torch.Tensor, digit_bits: int, digits: int) -> torch.Tensor:
    """One-hot planes of base-2^digit_bits digits: out[g, v] packs [digit g of values == v].

    values are read as non-negative ring elements; shape [digits, 2^digit_bits, words].
    """
    flat = values.reshape(-1).contiguous().cpu().numpy()
    out = np.zeros((digits, 1 << digit_bits, words_for(flat.size)), np.int64)
    if flat.size:
        _digit_planes(flat, digit_bits, digits, out)
    return torch.from_numpy(out).to(values.device)


@numba.njit(parallel=True, nogil=True, cache=True)
def _compare_leaves(public, planes, digit_bits, lt, eq):
    digits, values, words = planes.shape
    mask = (np.int64(1) << digit_bits) - 1
    for w in numba.prange(words):
        start = w * 64
        stop = min(start + 64, public.size)
        suffix = np.zeros(values + 1, np.int64)   # suffix[v] = XOR of planes[g, u, w], u >= v
        for g in range(digits):
            for v in range(values - 1, -1, -1):
                suffix[v] = suffix[v + 1] ^ planes[g, v, w]
            lt_word = np.int64(0)
            eq_word = np.int64(0)
            for i in range(start, stop):
                d = (public[i] >> (g * digit_bits)) & mask
                shift = i - start
                lt_word |= ((suffix[d + 1] >> shift) & 1) << shift
                eq_word |= ((planes[g, d, w] >> shift) & 1) << shift
            lt[g, w] = lt_word
            eq[g, w] = eq_word


def compare_leaves(public: torch.Tensor, planes: torch.Tensor, digit_bits: int):
    """Per digit g, XOR shares of [p_g < s_g] and [p_g == s_g] for public p and secret s.

    `planes` are this party's XOR shares of s's one-hot digit planes ([digits, 2^digit_bits,
    words], as digit_planes makes them); since p is public, both results are XORs of plane
    bits selected by p's digits: [p_g < s_g] = XOR_{v > p_g} onehot[g, v]. Returns two
    [digits, words] tensors.
    """
    flat = public.reshape(-1).contiguous().cpu().numpy()
    np_planes = planes.contiguous().cpu().numpy()
    lt = np.zeros(np_planes.shape[::2], np.int64)
    eq = np.zeros_like(lt)
    if flat.size:
        _compare_leaves(flat, np_planes, digit_bits, lt, eq)
    return torch.from_numpy(lt).to(public.device), torch.from_numpy(eq).to(public.device)
