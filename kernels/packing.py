"""The low b bits of int64 values packed end to end: b bits a value on the wire, not ceil(b / 8) bytes.

Value i occupies bits [i b, (i + 1) b) of a little-endian bit stream of whole 64-bit words,
8 ceil(numel b / 64) bytes in all; widths that are whole bytes are ring.low_bytes' layout
(and use it), zero-padded to the word. Packing keeps only x mod 2^b, unpacking gives values
in [0, 2^b). CPU tensors go through Numba (values gathered into words in an accumulator; each
read back from the one or two words it spans, in place); other devices through torch, with
the same result.
"""
import sys

import numba
import numpy as np
import torch

from .ring import RING_BITS, add_low_bytes, join_low_bytes, low_bytes


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes of numel values of `bits` bits packed end to end, in whole 64-bit words."""
    return 8 * -(-int(numel) * int(bits) // RING_BITS)


def pack_low_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """The low `bits` bits of each value of an int64 tensor, packed: a flat uint8 tensor of
    packed_bytes(numel, bits) (zeros after the last value)."""
    bits = _check_bits(bits)
    flat = values.reshape(-1)
    size = packed_bytes(flat.numel(), bits)
    if bits % 8 == 0:
        packed = low_bytes(flat, bits // 8)
        return packed if packed.numel() == size else torch.cat([packed, packed.new_zeros(size - packed.numel())])
    if flat.device.type == "cpu":
        out = np.empty(size // 8, dtype=np.uint64)
        _pack_words(flat.contiguous().numpy().view(np.uint64), bits, out)
        return torch.from_numpy(out.view(np.uint8))
    return _pack_torch(flat, bits, size // 8).view(torch.uint8)


def unpack_low_bits(data: torch.Tensor, numel: int, bits: int, out: torch.Tensor | None = None,
                    add: bool = False) -> torch.Tensor:
    """numel values in [0, 2^bits) from pack_low_bits' bytes, written into (add: added to) `out`,
    a contiguous int64 tensor of numel elements, where given."""
    bits, numel = _check_bits(bits), int(numel)
    _check_packed(data, numel, bits)
    if out is not None and (out.dtype != torch.int64 or out.numel() != numel or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous int64 tensor of {numel} elements")
    if add and out is None:
        raise ValueError("add=True adds to an out tensor: give one")
    if bits % 8 == 0:
        data = data.reshape(-1)[:numel * bits // 8]
        if add:
            return add_low_bytes(out, data, bits // 8)
        return join_low_bytes(data, bits // 8, out=out)
    if out is None:
        out, add = torch.empty(numel, dtype=torch.int64, device=data.device), False
    if data.device.type == "cpu" and out.device.type == "cpu":
        _unpack_words(data.contiguous().numpy().view(np.uint64), bits, out.numpy().reshape(-1), add)
        return out
    value = _unpack_torch(data.contiguous().view(torch.int64), numel, bits).to(out.device)
    return out.add_(value.reshape(out.shape)) if add else out.copy_(value.reshape(out.shape))


def add_unpacked(own: torch.Tensor, peers: list, bits: int, shift: int = 0) -> torch.Tensor:
    """((own + the values packed in each of `peers`) mod 2^bits) * 2^shift mod 2^64, a fresh flat
    int64 tensor: a party's share plus its peers' packed low bits (pack_low_bits of tensors of
    own's numel), read in one pass per peer on the CPU instead of unpacking, adding, masking
    and shifting apart."""
    bits, numel, shift = _check_bits(bits), own.numel(), int(shift)
    if not 0 <= shift < RING_BITS:
        raise ValueError(f"a shift of 0 to {RING_BITS - 1} bits, got {shift}")
    flat = own.reshape(-1)
    if not peers or flat.device.type != "cpu" or sys.byteorder != "little":   # Numba: words in the bytes' order
        total = flat.clone()
        for data in peers:
            unpack_low_bits(data, numel, bits, out=total, add=True)
        return (total & ((1 << bits) - 1) if bits < RING_BITS else total) << shift
    for data in peers:
        _check_packed(data, numel, bits)
    out, base = torch.empty(numel, dtype=torch.int64), flat.contiguous().numpy()
    keep = np.int64(-1 if bits == RING_BITS else (1 << bits) - 1)
    for k, data in enumerate(peers):
        last = k == len(peers) - 1
        _unpack_sum(data.contiguous().numpy().view(np.uint64), bits, base if k == 0 else out.numpy(),
                    out.numpy(), keep if last else np.int64(-1), shift if last else 0)
    return out


def _check_packed(data: torch.Tensor, numel: int, bits: int) -> None:
    if data.dtype != torch.uint8 or data.numel() != packed_bytes(numel, bits):
        raise ValueError(f"{numel} values of {bits} bits take {packed_bytes(numel, bits)} bytes, got "
                         f"{data.numel()} of {data.dtype}")


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not 1 <= int(bits) <= RING_BITS:
        raise ValueError(f"1 to {RING_BITS} bits a value, got {bits}")
    return int(bits)


@numba.njit(nogil=True, cache=True)
def _pack_words(values, bits, words):
    """Values into a 64-bit accumulator, a word written out each time it fills."""
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    acc, filled, j = np.uint64(0), 0, 0
    for i in range(values.size):
        x = values[i] & mask
        acc |= x << np.uint64(filled)
        filled += bits
        if filled >= 64:
            words[j] = acc
            j += 1
            filled -= 64
            acc = x >> np.uint64(bits - filled) if filled else np.uint64(0)   # what did not fit
    if filled:
        words[j] = acc


@numba.njit(nogil=True, inline="always")
def _value(words, bits, mask, i, last):
    """Value i from the one or two words it spans (the next one unless `last`), the next word
    shifted in two steps so that a value starting a word takes nothing from it."""
    start = i * bits
    j, off = start >> 6, np.uint64(start & 63)
    value = words[j] >> off
    if not last or j + 1 < words.size:
        value |= (words[j + 1] << (np.uint64(63) - off)) << np.uint64(1)
    return np.int64(value & mask)


@numba.njit(nogil=True, cache=True)
def _unpack_words(words, bits, values, add):
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    inner = min(values.size, max(0, words.size - 1) * 64 // bits)    # values whose next word exists
    if add:
        for i in range(inner):
            values[i] += _value(words, bits, mask, i, False)
        for i in range(inner, values.size):
            values[i] += _value(words, bits, mask, i, True)
    else:
        for i in range(inner):
            values[i] = _value(words, bits, mask, i, False)
        for i in range(inner, values.size):
            values[i] = _value(words, bits, mask, i, True)


@numba.njit(nogil=True, cache=True)
def _unpack_sum(words, bits, base, values, keep, shift):
    """values = ((base + the packed values) & keep) << shift (base may be values itself)."""
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1) if bits < 64 else ~np.uint64(0)
    inner = min(values.size, max(0, words.size - 1) * 64 // bits)
    for i in range(inner):
        values[i] = ((base[i] + _value(words, bits, mask, i, False)) & keep) << shift
    for i in range(inner, values.size):
        values[i] = ((base[i] + _value(words, bits, mask, i, True)) & keep) << shift


def _pack_torch(flat: torch.Tensor, bits: int, words: int) -> torch.Tensor:
    x = flat & ((1 << bits) - 1)                       # non-negative: shifts right are logical
    start = torch.arange(flat.numel(), device=flat.device) * bits
    word, off = start >> 6, start & 63
    out = torch.zeros(words + 1, dtype=torch.int64, device=flat.device)
    out.index_add_(0, word, x << off)                  # disjoint bits: adding is OR
    spill = off + bits > 64
    out.index_add_(0, word[spill] + 1, x[spill] >> (64 - off[spill]))
    return out[:words].contiguous()


def _unpack_torch(words: torch.Tensor, numel: int, bits: int) -> torch.Tensor:
    start = torch.arange(numel, device=words.device) * bits
    j, off = start >> 6, start & 63
    low = (words[j] >> off) & torch.where(off == 0, -1, (1 << (64 - off).clamp(max=63)) - 1)
    spill = off + bits > 64
    high = torch.where(spill, words[(j + 1).clamp(max=words.numel() - 1)] << (64 - off).clamp(max=63), 0)
    return (low | high) & ((1 << bits) - 1)
