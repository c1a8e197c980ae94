"""Fused elementwise ring kernels for the local phases of protocols (Numba, parallel).

Each replaces a chain of torch/numpy passes over large share tensors with one pass; all
arithmetic wraps modulo 2^64 exactly as int64 does. CPU arrays go through Numba; other
devices use the equivalent torch expression.
"""
import sys

import numba
import numpy as np
import torch

from .packing import pack_low_bits, packed_bytes
from .ring import RING_BITS, bit, low_bits, msb, rshift_logical, to_ring

_MASK63 = (1 << 63) - 1


@numba.njit(nogil=True, inline="always")
def _public_part(ci, bits):
    """P = (c_low >> bits) + 2^(63-bits) c_top - 2^(62-bits) of an opened c (truncation_public)."""
    return (((ci & _MASK63) >> bits) + (((ci >> 63) & 1) << (RING_BITS - 1 - bits))
            - (np.int64(1) << (RING_BITS - 2 - bits)))


@numba.njit(nogil=True, inline="always")
def _truncated_share(ci, r_top, r_mid, bits, first):
    """A share of y = P + M, M = 2^(63-bits) (1 - 2 c_top) r_top - r_mid (P at the first party)."""
    y = ((r_top * (1 - 2 * ((ci >> 63) & 1))) << (RING_BITS - 1 - bits)) - r_mid
    return y + _public_part(ci, bits) if first else y


@numba.njit(parallel=True, nogil=True, cache=True)
def _trunc_reconstruct(c, r_top, r_mid, bits, first, out):
    for i in numba.prange(c.size):
        out[i] = _truncated_share(c[i], r_top[i], r_mid[i], bits, first)


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


@numba.njit(nogil=True, cache=True)
def _gated_truncation(c, top, mid, top_beta, mid_beta, a, b, beta, bits, first, out):
    for i in range(c.size):
        ci = c[i]
        y = _truncated_share(ci, top[i], mid[i], bits, first)
        beta_y = _public_part(ci, bits) * beta[i] + _truncated_share(ci, top_beta[i], mid_beta[i], bits, False)
        out[i] = a[i] * y + b[i] * beta_y


def gated_truncation(c, top, mid, top_beta, mid_beta, a, b, beta, bits: int, first: bool):
    """Shares of s y for a truncation output y (trunc_reconstruct of c, r_top, r_mid) and a
    comparison's bit s = A + B beta (protocols/comparison.SignGate): A y + B beta y, where
    beta y = P beta + 2^(63-bits) (1 - 2 c_top) (r_top beta) - r_mid beta for the public part
    P of y (truncation_public) and the dealer's r_top beta, r_mid beta. One pass on the CPU
    where all have one shape; the torch formulation elsewhere."""
    tensors = (c, top, mid, top_beta, mid_beta, a, b, beta)
    if any(t.device.type != "cpu" or t.shape != c.shape for t in tensors):
        y = trunc_reconstruct(c, top, mid, bits, first)
        return a * y + b * beta_times_truncated(c, bits, beta, top_beta, mid_beta)
    out = torch.empty(c.shape, dtype=torch.int64)
    _gated_truncation(*(t.contiguous().numpy().reshape(-1) for t in tensors), bits, first, out.numpy().reshape(-1))
    return out


def beta_times_truncated(c, bits: int, beta, top_beta, mid_beta):
    """Shares of beta y for the truncation output y = P + M of the opened c by `bits`
    (protocols/truncation.py): P beta + 2^(63-bits) (1 - 2 c_top) r_top beta - r_mid beta, from
    the dealer's r_top beta and r_mid beta (torch, any device)."""
    flip = 1 - 2 * msb(c)
    return truncation_public(c, bits) * beta + ((flip * top_beta) << (RING_BITS - 1 - bits)) - mid_beta


@numba.njit(nogil=True, cache=True)
def _sign_coefficients(c, p, bits, a, b):
    for i in range(c.size):
        flip = 2 * ((c[i] >> bits) & 1) - 1          # 1 - 2q, q = 1 - bit
        a[i] = (1 - flip) // 2 + flip * p[i]
        b[i] = flip * (1 - 2 * p[i])


def sign_coefficients(c, p, bits: int) -> tuple:
    """(A, B) = (q + (1 - 2q) p, (1 - 2q)(1 - 2p)) for q = 1 - bit `bits` of c and bits p in
    {0, 1} (protocols/comparison.py: a sign s = q XOR p XOR beta is A + B beta), one pass on the
    CPU where c and p have one shape."""
    if not 0 <= bits < RING_BITS:
        raise ValueError(f"a bit index of 0 to {RING_BITS - 1}, got {bits}")
    if c.device.type != "cpu" or p.device.type != "cpu" or c.shape != p.shape:
        q = 1 - bit(c, bits)
        return q + (1 - 2 * q) * p, (1 - 2 * q) * (1 - 2 * p)
    a, b = torch.empty(c.shape, dtype=torch.int64), torch.empty(c.shape, dtype=torch.int64)
    _sign_coefficients(c.contiguous().numpy().reshape(-1), p.contiguous().numpy().reshape(-1), bits,
                       a.numpy().reshape(-1), b.numpy().reshape(-1))
    return a, b


@numba.njit(nogil=True, cache=True)
def _mask_parts(r, bits, top, mid):
    for i in range(r.size):
        top[i] = (r[i] >> 63) & 1
        mid[i] = (r[i] & _MASK63) >> bits


def truncation_mask_parts(r, bits: int) -> list:
    """[r_top, r_mid] = [msb(r), (r mod 2^63) >> bits] of a truncation mask r (the dealer's
    part of protocols/truncation.py), in one pass on the CPU (one thread: the dealer's)."""
    if not 0 <= bits < RING_BITS:
        raise ValueError(f"a shift of 0 to {RING_BITS - 1} bits, got {bits}")
    if r.device.type != "cpu":
        return truncation_mask_parts_torch(r, bits)
    top, mid = torch.empty(r.shape, dtype=torch.int64), torch.empty(r.shape, dtype=torch.int64)
    _mask_parts(r.contiguous().numpy().reshape(-1), bits, top.numpy().reshape(-1), mid.numpy().reshape(-1))
    return [top, mid]


@numba.njit(nogil=True, cache=True)
def _triple_corrections(a, b, drawn, out):
    for i in range(out.size):
        out[i] = (a[0, i] + a[1, i]) * (b[0, i] + b[1, i]) - drawn[i]


def triple_corrections(a, b, drawn):
    """(a_0 + a_1) (b_0 + b_1) - drawn, from two parties' shares a = [a_0, a_1] and b (each
    [2, numel]) and their drawn shares of the product: the dealer's corrections of a two-party
    triple (protocols/correlations.py) in one pass (one thread: the dealer's)."""
    out = torch.empty(drawn.shape, dtype=torch.int64)
    _triple_corrections(a.numpy(), b.numpy(), drawn.numpy(), out.numpy())
    return out


@numba.njit(nogil=True, inline="always")
def _truncation_mask_loop(r, bits, top_drawn, width, mid_drawn, top_out, mid_out, a, b, product_drawn,
                          product_out):
    for i in range(mid_out.size):
        v = r[0, i] + r[1, i]
        if product_out.size:
            product_out[i] = (a[0, i] + a[1, i]) * (b[0, i] + b[1, i]) + v - product_drawn[i]
        drawn = np.int64(0)
        for byte in range(width):
            drawn |= np.int64(top_drawn[i * width + byte]) << (8 * byte)
        top = ((v >> 63) & 1) - drawn
        for byte in range(width):
            top_out[i * width + byte] = (top >> (8 * byte)) & 0xFF
        mid_out[i] = ((v & _MASK63) >> bits) - mid_drawn[i]


@numba.njit(nogil=True, cache=True)
def _truncation_mask_corrections(r, bits, top_drawn, width, mid_drawn, top_out, mid_out, a, b, product_drawn,
                                 product_out):
    if width == 3:           # m = 16 to 23 (the fractional bits): the byte loops unrolled
        _truncation_mask_loop(r, bits, top_drawn, 3, mid_drawn, top_out, mid_out, a, b, product_drawn, product_out)
    else:
        _truncation_mask_loop(r, bits, top_drawn, width, mid_drawn, top_out, mid_out, a, b, product_drawn,
                              product_out)


def truncation_mask_corrections(r, bits: int, top_drawn, width: int, mid_drawn, product=None) -> list:
    """truncation_mask_parts of r = r_0 + r_1 (r: [2, numel]) less the drawn shares: r_top's in
    its low `width` bytes (top_drawn and the result: `width` bytes an element, least significant
    first), r_mid's as int64; the dealer's corrections of a two-party truncation mask in one
    pass (one thread: the dealer's). product = (a, b, drawn), each a's shape as r's: also
    (a_0 + a_1) (b_0 + b_1) + r - drawn, first (a product's triple with the mask folded in)."""
    if not 0 <= bits < RING_BITS:
        raise ValueError(f"a shift of 0 to {RING_BITS - 1} bits, got {bits}")
    top, mid = torch.empty(top_drawn.shape, dtype=torch.uint8), torch.empty(mid_drawn.shape, dtype=torch.int64)
    none = np.empty((2, 0), dtype=np.int64)
    a, b, product_drawn = (none, none, none[0]) if product is None else (t.numpy() for t in product)
    product_out = torch.empty(product_drawn.shape, dtype=torch.int64)
    _truncation_mask_corrections(r.numpy(), bits, top_drawn.numpy(), width, mid_drawn.numpy(), top.numpy(),
                                 mid.numpy(), a, b, product_drawn, product_out.numpy())
    return [top, mid] if product is None else [product_out, top, mid]


def truncation_mask_parts_torch(r, bits: int) -> list:
    """truncation_mask_parts as torch operations (any device)."""
    return [msb(r), rshift_logical(low_bits(r, RING_BITS - 1), bits)]


@numba.njit(parallel=True, nogil=True, cache=True)
def _truncated_product(c_i, c_j, y_i, y_j, mid_mid, mid_top, top_mid, top_top, bits_i, bits_j, top_top_coeff,
                       first, out):
    t_i, t_j = np.int64(1) << (RING_BITS - 1 - bits_i), np.int64(1) << (RING_BITS - 1 - bits_j)
    for k in numba.prange(out.size):
        top_i, top_j = (c_i[k] >> 63) & 1, (c_j[k] >> 63) & 1
        p_i, p_j = _public_part(c_i[k], bits_i), _public_part(c_j[k], bits_j)
        s_i, s_j = 1 - 2 * top_i, 1 - 2 * top_j
        m_i, m_j = y_i[k], y_j[k]
        if first:
            m_i -= p_i
            m_j -= p_j
        z = p_i * m_j + p_j * m_i + mid_mid[k] - s_j * t_j * mid_top[k] - s_i * t_i * top_mid[k]
        z += s_i * s_j * top_top_coeff * top_top[k]
        if first:
            z += p_i * p_j
        out[k] = z


def truncated_product(c_i, c_j, y_i, y_j, mask_products, bits_i: int, bits_j: int, first: bool):
    """Shares of y_i * y_j for two truncation outputs (protocols/truncation.FusedTruncations).

    c: the opened values, y: the output shares, bits: the shifts; mask_products: shares of
    (r_mid_i r_mid_j, r_mid_i r_top_j, r_top_i r_mid_j, r_top_i r_top_j; any tensor for the
    last where t_i t_j vanishes mod 2^64). With P = (c_low >>
    bits) + t c_top - 2^(62-bits), t = 2^(63-bits), s = 1 - 2 c_top and M = y - P (P at the
    first party only): z = P_i M_j + P_j M_i + M_i M_j (+ P_i P_j at the first party), where
    M_i M_j = mm - t_j s_j mt - t_i s_i tm + t_i t_j s_i s_j tt. All tensors of one shape.
    """
    t_i, t_j = 1 << (RING_BITS - 1 - bits_i), 1 << (RING_BITS - 1 - bits_j)
    top_top_coeff = (t_i * t_j) % (1 << RING_BITS)
    top_top_coeff -= (1 << RING_BITS) if top_top_coeff >= 1 << (RING_BITS - 1) else 0
    if c_i.device.type != "cpu":
        return _truncated_product_torch(c_i, c_j, y_i, y_j, mask_products, bits_i, bits_j, first)
    out = torch.empty(c_i.shape, dtype=torch.int64)
    _truncated_product(*(t.contiguous().numpy().reshape(-1) for t in (c_i, c_j, y_i, y_j, *mask_products)),
                       bits_i, bits_j, top_top_coeff, first, out.numpy().reshape(-1))
    return out


def truncation_public(c, bits: int):
    """P of a truncation output y = P + M (protocols/truncation.py): the part that is public
    once c is opened, (c_low >> bits) + 2^(63-bits) c_top - 2^(62-bits) (torch, any device)."""
    return (rshift_logical(low_bits(c, RING_BITS - 1), bits) + (msb(c) << (RING_BITS - 1 - bits))
            - (1 << (RING_BITS - 2 - bits)))


def _truncated_product_torch(c_i, c_j, y_i, y_j, mask_products, bits_i, bits_j, first):
    mid_mid, mid_top, top_mid, top_top = mask_products
    terms = []
    for c, y, bits in ((c_i, y_i, bits_i), (c_j, y_j, bits_j)):
        t, top = 1 << (RING_BITS - 1 - bits), msb(c)
        public = truncation_public(c, bits)
        terms.append((public, (1 - 2 * top) * t, y - public if first else y))
    (p_i, st_i, m_i), (p_j, st_j, m_j) = terms
    z = p_i * m_j + p_j * m_i + mid_mid - st_j * mid_top - st_i * top_mid
    z = z + st_i * st_j * top_top              # t_i t_j wraps mod 2^64, as it should
    return z + p_i * p_j if first else z


@numba.njit(parallel=True, nogil=True, cache=True)
def _shifted_sum(x, mask, offset, bits, out):
    for i in numba.prange(x.size):
        out[i] = np.int64(np.uint64(x[i] + mask[i] + offset) >> np.uint64(bits))


def shifted_sum(x, mask, offset: int, bits: int):
    """floor((x + mask + offset) / 2^bits) with the sum read as unsigned mod 2^64 (one pass on
    the CPU where x and mask have one shape): the top 64 - bits bits of a share of a masked
    value, as protocols/truncation.open_masked sends them."""
    if not 0 <= bits < RING_BITS:
        raise ValueError(f"a shift of 0 to {RING_BITS - 1} bits, got {bits}")
    if x.device.type != "cpu" or mask.device.type != "cpu" or x.shape != mask.shape:
        return rshift_logical(x + mask + to_ring(offset), bits)
    out = torch.empty(x.shape, dtype=torch.int64)
    _shifted_sum(x.contiguous().numpy().reshape(-1), mask.contiguous().numpy().reshape(-1),
                 np.int64(to_ring(offset)), bits, out.numpy().reshape(-1))
    return out


@numba.njit(nogil=True, cache=True)
def _masked_high(values, ab, own, other, a, b, first, mask, offset, k, high, words):
    """high = (v + mask + offset) >> k (logical; no mask where it is empty) and its 64 - k bit
    values packed end to end into words (kernels/packing's layout), for v = values or, where
    values is empty, the Beaver product share of _beaver_product_of_shares. One serial pass:
    the packing is inline, as a separate call it would cost as much as the rest of the pass."""
    n, bits, shift = high.size, RING_BITS - k, np.uint64(k)
    acc, filled, j = np.uint64(0), 0, 0
    for i in range(n):
        if values.size:
            v = values[i]
        else:
            d, e = own[i] + other[i], own[n + i] + other[n + i]
            v = ab[i] + d * (b[i] + e if first else b[i]) + a[i] * e
        if mask.size:
            v += mask[i]
        x = np.uint64(v + offset) >> shift
        high[i] = np.int64(x)
        acc |= x << np.uint64(filled)
        filled += bits
        if filled >= RING_BITS:
            words[j] = acc
            j += 1
            filled -= RING_BITS
            acc = x >> np.uint64(bits - filled) if filled else np.uint64(0)
    if filled:
        words[j] = acc


def masked_high(x, mask, offset: int, k: int) -> tuple:
    """(shifted_sum(x, mask, offset, k), pack_low_bits of it in 64 - k bits), in one pass on
    the CPU where x and mask have one shape: the share a truncation sends, and its message.
    mask None: x carries its mask already."""
    if not _packs_in_one_pass(x, x if mask is None else mask, k):
        high = shifted_sum(x, torch.zeros_like(x) if mask is None else mask, offset, k)
        return high, pack_low_bits(high, RING_BITS - k)
    empty = np.empty(0, dtype=np.int64)
    return _run_masked_high(x.shape, x.contiguous().numpy().reshape(-1), empty, empty, empty, empty, empty,
                            False, torch.empty(0, dtype=torch.int64) if mask is None else mask, offset, k)


def product_masked_high(ab, own, others: list, a, b, first: bool, mask, offset: int, k: int) -> tuple:
    """masked_high(beaver_product_of_shares(ab, own, others, a, b, first), mask, offset, k),
    the product share formed inside the masking pass (one pass on the CPU where two parties
    take part and all have one shape), never written out."""
    if len(others) != 1 or not ab.shape == a.shape == b.shape or own.numel() != 2 * a.numel() \
            or not _packs_in_one_pass(ab, ab if mask is None else mask, k):
        return masked_high(beaver_product_of_shares(ab, own, others, a, b, first), mask, offset, k)
    arrays = (t.contiguous().numpy().reshape(-1) for t in (ab, own, others[0], a, b))
    return _run_masked_high(ab.shape, np.empty(0, dtype=np.int64), *arrays, first,
                            torch.empty(0, dtype=torch.int64) if mask is None else mask, offset, k)


def _packs_in_one_pass(x, mask, k: int) -> bool:
    if not 0 <= k < RING_BITS:
        raise ValueError(f"a shift of 0 to {RING_BITS - 1} bits, got {k}")
    return x.device.type == "cpu" and mask.device.type == "cpu" and x.shape == mask.shape \
        and sys.byteorder == "little"      # Numba writes the words in the bytes' order


def _run_masked_high(shape, values, ab, own, other, a, b, first, mask, offset, k) -> tuple:
    high = torch.empty(shape, dtype=torch.int64)
    words = np.empty(packed_bytes(high.numel(), RING_BITS - k) // 8, dtype=np.uint64)
    _masked_high(values, ab, own, other, a, b, first, mask.contiguous().numpy().reshape(-1),
                 np.int64(to_ring(offset)), k, high.numpy().reshape(-1), words)
    return high, torch.from_numpy(words.view(np.uint8))


@numba.njit(parallel=True, nogil=True, cache=True)
def _beaver_product(ab, d, e, a, b, first, out):
    for i in numba.prange(ab.size):
        bi = b[i] + e[i] if first else b[i]
        out[i] = ab[i] + d[i] * bi + a[i] * e[i]


@numba.njit(parallel=True, nogil=True, cache=True)
def _beaver_product_of_shares(ab, own, other, a, b, first, out):
    n = ab.size
    for i in numba.prange(n):
        d, e = own[i] + other[i], own[n + i] + other[n + i]
        bi = b[i] + e if first else b[i]
        out[i] = ab[i] + d * bi + a[i] * e


def beaver_product_of_shares(ab, own, others: list, a, b, first: bool):
    """beaver_product with d and e given as the shares of their opening: `own` and each of
    `others` hold [d | e] flat (sharing.exchange_differences), added as they are read (one
    pass on the CPU where all have ab's shape and two parties take part)."""
    other = others[0] if len(others) == 1 else sum(others[1:], others[0])
    numel_d = a.numel()
    if ab.device.type != "cpu" or not ab.shape == a.shape == b.shape or own.numel() != 2 * numel_d:
        opened = own + other
        d, e = opened[:numel_d].view(a.shape), opened[numel_d:].view(b.shape)
        return beaver_product(ab, d, e, a, b, first)
    out = torch.empty(ab.shape, dtype=torch.int64)
    _beaver_product_of_shares(*(t.contiguous().numpy().reshape(-1) for t in (ab, own, other, a, b)), first,
                              out.numpy().reshape(-1))
    return out


def beaver_product(ab, d, e, a, b, first: bool):
    """A share of x y from shares of a Beaver triple (a, b, ab) and the opened d = x - a and
    e = y - b: ab + d b + a e, plus d e at the first party (x y = (d + a)(e + b)), mod 2^64.
    One pass on the CPU where all five have one shape; broadcasting torch otherwise."""
    if ab.device.type != "cpu" or not ab.shape == d.shape == e.shape == a.shape == b.shape:
        return ab + d * (b + e if first else b) + a * e
    out = torch.empty(ab.shape, dtype=torch.int64)
    _beaver_product(*(t.contiguous().numpy().reshape(-1) for t in (ab, d, e, a, b)), first,
                    out.numpy().reshape(-1))
    return out
