"""Fused kernels against Python-int arithmetic and their torch formulation, bit-exact."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcft.kernels import PRG
from mpcft.kernels.fused import (_truncated_product_torch, beaver_product, beaver_product_of_shares, beta_times_truncated,
                                 gated_truncation, masked_high, product_masked_high, shifted_sum,
                                 sign_coefficients, trunc_reconstruct, trunc_reconstruct_torch, triple_corrections,
                                 truncated_product, truncation_mask_corrections, truncation_mask_parts,
                                 truncation_mask_parts_torch)
from mpcft.kernels.packing import pack_low_bits

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


def product_reference(c_i, c_j, y_i, y_j, terms, bits_i, bits_j, first):
    """truncated_product with Python ints: z = P_i M_j + P_j M_i + M_i M_j (+ P_i P_j)."""
    out = []
    for k, (ci, cj, yi, yj) in enumerate(zip(c_i.tolist(), c_j.tolist(), y_i.tolist(), y_j.tolist())):
        mm, mt, tm, tt = (t[k].item() for t in terms)
        p, s, t, m = [], [], [], []
        for c, y, bits in ((ci % MOD, yi, bits_i), (cj % MOD, yj, bits_j)):
            top = c >> 63
            p.append(((c % 2**63) >> bits) + top * 2 ** (63 - bits) - 2 ** (62 - bits))
            s.append(1 - 2 * top)
            t.append(2 ** (63 - bits))
            m.append(y - p[-1] if first else y)
        z = p[0] * m[1] + p[1] * m[0] + mm - s[1] * t[1] * mt - s[0] * t[0] * tm + s[0] * s[1] * t[0] * t[1] * tt
        out.append(signed(z + (p[0] * p[1] if first else 0)))
    return out


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 61), st.integers(1, 61), st.booleans(),
       st.integers(1, 200))
def test_truncated_product_bit_exact(seed, bits_i, bits_j, first, size):
    prg = PRG(seed)
    c_i, c_j, y_i, y_j = (prg.ring(size) for _ in range(4))
    terms = [prg.ring(size) for _ in range(4)]
    want = product_reference(c_i, c_j, y_i, y_j, terms, bits_i, bits_j, first)
    assert truncated_product(c_i, c_j, y_i, y_j, terms, bits_i, bits_j, first).tolist() == want
    assert _truncated_product_torch(c_i, c_j, y_i, y_j, terms, bits_i, bits_j, first).tolist() == want


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(-2**64, 2**64), st.integers(0, 63), st.integers(1, 300))
def test_shifted_sum_bit_exact(seed, offset, bits, size):
    prg = PRG(seed)
    x, mask = prg.ring(size), prg.ring(size)
    want = [signed(((v + r + offset) % MOD) >> bits) for v, r in zip(x.tolist(), mask.tolist())]
    assert shifted_sum(x, mask, offset, bits).tolist() == want
    assert shifted_sum(x, mask[:1], offset, bits).tolist() == [signed(((v + mask[0].item() + offset) % MOD) >> bits)
                                                                  for v in x.tolist()]   # broadcast: torch


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 62), st.integers(1, 300))
def test_truncation_mask_parts_bit_exact(seed, bits, size):
    r = PRG(seed).ring(size)
    want = [[(v % MOD) >> 63 for v in r.tolist()], [(v % 2**63) >> bits for v in r.tolist()]]
    assert [t.tolist() for t in truncation_mask_parts(r, bits)] == want
    assert [t.tolist() for t in truncation_mask_parts_torch(r, bits)] == want


def test_truncation_mask_parts_keeps_shape_and_refuses_bad_shifts():
    r = PRG(bytes(32)).ring((4, 6)).T              # non-contiguous
    top, mid = truncation_mask_parts(r, 20)
    assert top.shape == mid.shape == (6, 4)
    assert torch.equal(mid, truncation_mask_parts_torch(r, 20)[1])
    with pytest.raises(ValueError, match="shift"):
        truncation_mask_parts(r, 64)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 63), st.integers(1, 300))
def test_sign_coefficients_bit_exact(seed, bits, size):
    prg = PRG(seed)
    c, p = prg.ring(size), prg.bits(size)
    want_a, want_b = [], []
    for ci, pi in zip(c.tolist(), p.tolist()):
        q = 1 - (((ci % MOD) >> bits) & 1)
        want_a.append(q + (1 - 2 * q) * pi)
        want_b.append((1 - 2 * q) * (1 - 2 * pi))
    a, b = sign_coefficients(c, p, bits)
    assert a.tolist() == want_a and b.tolist() == want_b
    a, b = sign_coefficients(c, p[:1], bits)          # broadcast: the torch formulation
    assert b.shape == c.shape


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 61), st.booleans(), st.integers(1, 300))
def test_gated_truncation_is_a_y_plus_b_beta_y(seed, bits, first, size):
    prg = PRG(seed)
    c, top, mid, top_beta, mid_beta, a, b, beta = (prg.ring(size) for _ in range(8))
    y = trunc_reconstruct_torch(c, top, mid, bits, first)
    want = (a * y + b * beta_times_truncated(c, bits, beta, top_beta, mid_beta)).tolist()
    assert gated_truncation(c, top, mid, top_beta, mid_beta, a, b, beta, bits, first).tolist() == want
    # a beta y written out with Python ints: P beta + 2^(63-m) (1 - 2 c_top) r_top beta - r_mid beta
    for k in range(min(size, 5)):
        cu = c[k].item() % MOD
        public = (cu % 2**63 >> bits) + ((cu >> 63) << (63 - bits)) - 2 ** (62 - bits)
        by = public * beta[k].item() + (1 - 2 * (cu >> 63)) * top_beta[k].item() * 2 ** (63 - bits) - mid_beta[k].item()
        assert beta_times_truncated(c, bits, beta, top_beta, mid_beta)[k].item() == signed(by % MOD)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.booleans(), st.integers(1, 300))
def test_beaver_product_bit_exact(seed, first, size):
    prg = PRG(seed)
    ab, d, e, a, b = (prg.ring(size) for _ in range(5))
    want = [signed(abi + di * (bi + (ei if first else 0)) + ai * ei)
            for abi, di, ei, ai, bi in zip(*(t.tolist() for t in (ab, d, e, a, b)))]
    assert beaver_product(ab, d, e, a, b, first).tolist() == want


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.booleans(), st.integers(1, 200), st.integers(1, 3))
def test_beaver_product_of_shares_adds_the_messages_as_it_reads(seed, first, size, others):
    """[d | e] given as our message plus the others' (one peer: the fused kernel; more: summed first)."""
    prg = PRG(seed)
    ab, a, b, own = prg.ring(size), prg.ring(size), prg.ring(size), prg.ring(2 * size)
    theirs = [prg.ring(2 * size) for _ in range(others)]
    opened, before = sum(theirs, own), [t.clone() for t in [own] + theirs]
    want = beaver_product(ab, opened[:size], opened[size:], a, b, first)
    assert torch.equal(beaver_product_of_shares(ab, own, theirs, a, b, first), want)
    assert all(torch.equal(t, u) for t, u in zip([own] + theirs, before))     # received buffers left alone


def test_beaver_product_of_shares_broadcasts():
    prg = PRG(bytes(32))
    ab, a, b = prg.ring((6, 4)), prg.ring((6, 4)), prg.ring((4,))
    own, other = prg.ring(28), prg.ring(28)
    opened = own + other
    for first in (True, False):
        want = beaver_product(ab, opened[:24].view(6, 4), opened[24:], a, b, first)
        assert torch.equal(beaver_product_of_shares(ab, own, [other], a, b, first), want)


def test_beaver_product_broadcasts_and_accepts_views():
    prg = PRG(bytes(32))
    d, a = prg.ring((6, 4)), prg.ring((6, 4))
    e, b = prg.ring((4,)), prg.ring((4,))         # a factor broadcast along rows
    ab = prg.ring((6, 4))
    for first in (True, False):
        want = ab + d * (b + e if first else b) + a * e
        assert torch.equal(beaver_product(ab, d, e, a, b, first), want)
        views = [t.T.contiguous().T for t in (ab, d, a)]       # same values, column-major strides
        e2, b2 = e.expand(6, 4), b.expand(6, 4)
        assert torch.equal(beaver_product(views[0], views[1], e2, views[2], b2, first), want)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(-2**64, 2**64), st.integers(0, 63), st.integers(1, 300),
       st.booleans())
def test_masked_high_is_the_shifted_sum_and_its_packed_message(seed, offset, k, size, masked):
    prg = PRG(seed)
    x, mask = prg.ring((size, 1)), prg.ring((size, 1))
    high = shifted_sum(x, mask if masked else torch.zeros_like(x), offset, k)
    got_high, got_packed = masked_high(x, mask if masked else None, offset, k)
    assert got_high.shape == x.shape and torch.equal(got_high, high)
    assert torch.equal(got_packed, pack_low_bits(high, 64 - k))
    assert [t.tolist() for t in masked_high(x, mask[:1] if masked else None, offset, k)] == \
        [t.tolist() for t in (shifted_sum(x, mask[:1] if masked else torch.zeros(1, dtype=torch.int64), offset, k),
                              pack_low_bits(shifted_sum(x, mask[:1] if masked else torch.zeros(1, dtype=torch.int64),
                                                        offset, k), 64 - k))]       # broadcast: torch


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.booleans(), st.integers(0, 63), st.integers(1, 200),
       st.integers(1, 2), st.booleans())
def test_product_masked_high_forms_the_beaver_share_in_the_masking_pass(seed, first, k, size, others, masked):
    """One peer: the one-pass kernel; two: the product first, then masked_high."""
    prg = PRG(seed)
    ab, a, b, mask, own = prg.ring(size), prg.ring(size), prg.ring(size), prg.ring(size), prg.ring(2 * size)
    theirs = [prg.ring(2 * size) for _ in range(others)]
    product = beaver_product_of_shares(ab, own, theirs, a, b, first)
    want = masked_high(product, mask if masked else None, 12345, k)
    got = product_masked_high(ab, own, theirs, a, b, first, mask if masked else None, 12345, k)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 62), st.integers(1, 300))
def test_two_party_dealer_kernels_against_python_ints(seed, bits, size):
    prg = PRG(seed)
    a, b, r = prg.ring((2, size)), prg.ring((2, size)), prg.ring((2, size))
    product_drawn, mid_drawn = prg.ring(size), prg.ring(size)
    width = -(-(bits + 1) // 8)
    top_drawn = torch.frombuffer(bytearray(prg.bytes(size * width)), dtype=torch.uint8)
    ints = [[v % MOD for v in t.tolist()] for t in (a[0], a[1], b[0], b[1], r[0], r[1], product_drawn, mid_drawn)]
    a0, a1, b0, b1, r0, r1, pd, md = ints
    tops = [int.from_bytes(bytes(top_drawn[i * width:(i + 1) * width].tolist()), "little") for i in range(size)]
    rs = [(u + v) % MOD for u, v in zip(r0, r1)]
    want_product = [signed((u0 + u1) * (v0 + v1) + ri - p) for u0, u1, v0, v1, ri, p in zip(a0, a1, b0, b1, rs, pd)]
    want_top = b"".join((((ri >> 63) - t) % 256 ** width).to_bytes(width, "little") for ri, t in zip(rs, tops))
    want_mid = [signed(((ri % 2**63) >> bits) - m) for ri, m in zip(rs, md)]
    assert triple_corrections(a, b, product_drawn).tolist() == [signed((u0 + u1) * (v0 + v1) - p)
                                                               for u0, u1, v0, v1, p in zip(a0, a1, b0, b1, pd)]
    top, mid = truncation_mask_corrections(r, bits, top_drawn, width, mid_drawn)
    assert bytes(top.tolist()) == want_top and mid.tolist() == want_mid
    product, top, mid = truncation_mask_corrections(r, bits, top_drawn, width, mid_drawn,
                                                    product=(a, b, product_drawn))
    assert product.tolist() == want_product and bytes(top.tolist()) == want_top and mid.tolist() == want_mid
