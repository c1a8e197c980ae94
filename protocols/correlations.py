"""Dealer correlations with seed compression: their layouts, maths and the dealer's handler.

Where a party gets them from (online from the dealer, or a pre-generated file) is
protocols/sources.py. The dealer shares a secret seed s_i with every party i. A correlation is identified by its
layout L (kind and parameters, e.g. "trunc" of shape [4, 8] with 20 bits) and its number k,
which counts the earlier correlations of the same layout; party i's pads for it come from
the stream PRG(HKDF(s_i, "corr", H(L), e, k)), so pads drawn for one layout never reappear in
another. e is the key epoch: a run moves to a new one at each checkpoint (MPCContext.new_epoch),
where every count restarts, and the dealer refuses requests of an earlier epoch, so that a
resumed run draws the same streams as an uninterrupted one and none is answered twice. A correlation has random inputs (e.g. the triple's a and b) and derived values
(c = a*b): every party draws its shares of the random inputs from its stream, so a = sum_i a_i
is uniform and nobody sends anything for it. The derived values are corrected in parts: each
one's elements, flattened, are cut into n runs (correction_cuts; one, party 0's, below 16,384
elements), and party r draws its shares of every element but its own run r, whose share the
dealer sends it, c_r = c - sum_{i != r} c_i there. So every party receives about 1/n of the
dealer's bytes (party 0 used to receive all, and its link was the busiest). The dealer, which
knows every seed, learns all correlations (the usual trusted-dealer model); any n-1 parties'
shares are independent of the correlated values (each run's missing share is drawn by, or
corrected at, a party outside them). A value that its users only ever multiply by
2^(64 - w) (a truncation mask's top bit r_top, read times 2^(63 - m), and its products) is
needed mod 2^w alone: its corrections travel in ceil(w / 8) bytes (3 instead of 8 for m = 20).

Kinds (params -> values, all as additive shares):
- "triple"(shape_a, shape_b): a, b uniform; c = a * b (broadcast).
- "matmul_triple"(shape_a, shape_b): A, B uniform; C = A @ B (batched).
- "matmul_grads"(shape_a, shape_b, grad_a, grad_b): "matmul_triple" for [..., m, k] @ [..., k, n]
  (the same batch dimensions) plus a uniform C of the product's shape, and C B^T where grad_a,
  A^T C where grad_b: the masks of a product that its backward reuses (beaver.MatmulWithGrads).
- "factor_products"(shape, factors, square): a uniform of `shape`, b_k uniform of each shape in
  `factors` (each broadcasting to `shape`); a^2 where square, and a * b_k: one x's products
  with several factors and its square, x opened masked once (beaver.MaskedFactor).
- "square"(shape): a uniform; a^2.
- "trunc"(shape, bits): r uniform; r_top = msb(r); r_mid = (r mod 2^63) >> bits.
- "product_trunc"(shape, bits): a, b uniform and a hidden r uniform; a * b + r, and r_top and
  r_mid of r as for "trunc": a product's triple with the mask of its truncation folded into c,
  so that the parties never draw r (truncation.truncate_product).
- "and_products"(words, factors, sets): binary (XOR-shared) packed masks r_k uniform, `factors`
  of them of `words` words; per entry S of `sets` (distinct sorted index lists of two or more
  masks) R_S = AND_{k in S} r_k (binary.and_products).
- "sign"(shape, bits, digit_bits): r, s uniform; the digit planes of r, bit_L(r) XOR beta and
  beta = s mod 2 (protocols/comparison.py).
- "select"(shape, bits, digit_bits, factor, later): "sign" plus a uniform a of shape `factor`
  (which broadcasts to `shape`) and a * beta: the factor y's product with the bit, y s, is local
  once y - a is open (comparison.select_negative, below_thresholds); and `later` more such
  pairs (a_k, a_k * beta) of the full shape, for values that the bit multiplies after the
  comparison (comparison.Select.times).
- "select_scales"(shape, bits, digit_bits, factor, shifts): "select" for shape [T, *factor] plus
  a truncation mask r of the factor's shape, its r_top, r_mid_k = (r mod 2^63) >> m_k for each
  of the T + 1 `shifts`, and per threshold j the products of its beta_j with r_top, r_mid_(j-1)
  and r_mid_j (comparison.ThresholdScale).
- "sign_gates"(shape, bits, digit_bits, gates): "sign" plus, per entry m_k of `gates`, a
  truncation mask r_k with r_top_k and r_mid_k as for "trunc" and their products with the
  comparison's bit beta, r_top_k beta and r_mid_k beta (comparison.SignGate).
- "trunc_products"(shape, bits, pairs): a truncation mask r_i per entry m_i of `bits`, its
  r_top_i and r_mid_i as for "trunc"; per pair (i, j) the cross products of the masks that
  protocols/truncation.FusedTruncations needs to multiply the truncated outputs locally:
  r_mid_i r_mid_j, r_mid_i r_top_j, r_top_i r_mid_j, and r_top_i r_top_j unless
  m_i + m_j <= 62 (its coefficient 2^(126 - m_i - m_j) then vanishes mod 2^64); for i == j
  only r_mid_i^2 and r_mid_i r_top_i (r_top_i^2 = r_top_i).
- "dp_noise"(shape, variance_num, variance_den): a 256-bit key k uniform; noise z drawn from
  the discrete Gaussian of variance variance_num / variance_den (ring units) by the exact
  sampler (kernels/discrete_noise.py) on PRG(k). k = sum_i k_i is known to the dealer alone
  (and to all n parties together), so z is hidden from any n-1 parties (protocols/noise.py).
- "dp_laplace"(shape, scale_num, scale_den): the same with the discrete Laplace of scale
  scale_num / scale_den, P(z) proportional to exp(-|z| / scale).
"""
import collections
import functools
import hashlib
import json
import math
import threading
from fractions import Fraction

import numpy as np
import torch

from mpcft.kernels import PRG, derive_seed, ring_matmul
from mpcft.kernels.discrete_noise import (discrete_gaussian, discrete_laplace, laplace_scale_fraction,
                                          variance_fraction)
from mpcft.kernels.bits import digit_planes, pack_bits, words_for
from mpcft.kernels.fused import triple_corrections, truncation_mask_corrections, truncation_mask_parts
from mpcft.kernels.ring import RING_BITS, bit, join_low_bytes, low_bits, low_bytes, msb, sub_low_bytes
from mpcft.kernels.shapes import BroadcastError, broadcast_shapes


def _shape(value) -> tuple:
    return tuple(int(s) for s in value)


def _matmul_shape(a, b) -> tuple:
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:     # a request's shapes, checked before use
        raise ValueError(f"shapes {list(a)} @ {list(b)} do not multiply as matrices")
    return broadcast_shapes(a[:-2], b[:-2]) + (a[-2], b[-1])


# How a value's shares combine, the second entry of each (shape, how) of a spec: BINARY, XOR
# of packed words; otherwise the sum mod 2^64 of arithmetic shares, of which the value's users
# read only the low `how` bits: ARITH (all 64), or fewer for a value that is only ever
# multiplied by 2^(64 - how) (a truncation mask's top bit and its products), whose correction
# travels in ceil(how / 8) bytes instead of 8. HIDDEN: a random value that only derived values
# use, summed by the dealer alone: each party skips its draw, and nobody ever holds a share.
ARITH, BINARY, HIDDEN = 64, 0, -1


def _width(how: int) -> int:
    """Bytes per element of a correction of a value combined as `how`."""
    return 8 if how == BINARY else -(-how // 8)


def _triple(p):
    a, b = _shape(p["shape_a"]), _shape(p["shape_b"])
    return [(a, ARITH), (b, ARITH)], [(broadcast_shapes(a, b), ARITH)], lambda x, y: [x * y]


def _matmul_triple(p):
    a, b = _shape(p["shape_a"]), _shape(p["shape_b"])
    return [(a, ARITH), (b, ARITH)], [(_matmul_shape(a, b), ARITH)], lambda x, y: [ring_matmul(x, y)]


def _matmul_grads(p):
    a, b = _shape(p["shape_a"]), _shape(p["shape_b"])
    if len(a) < 2 or len(b) < 2 or a[:-2] != b[:-2] or a[-1] != b[-2]:
        raise ValueError(f"'matmul_grads': shapes {list(a)} @ {list(b)} must be [..., m, k] @ [..., k, n] "
                         f"with the same batch dimensions")
    out, grad_a, grad_b = a[:-1] + b[-1:], int(p["grad_a"]), int(p["grad_b"])

    def derive(x, y, c):
        return ([ring_matmul(x, y)] + [ring_matmul(c, y.mT.contiguous())] * grad_a
                + [ring_matmul(x.mT.contiguous(), c)] * grad_b)
    return [(a, ARITH), (b, ARITH), (out, ARITH)], [(out, ARITH)] + [(a, ARITH)] * grad_a + [(b, ARITH)] * grad_b, derive


def _factor_products(p):
    shape, factors, square = _shape(p["shape"]), p["factors"], int(p["square"])
    if not 1 <= len(factors) + square or len(factors) > MAX_FACTORS:
        raise ValueError(f"'factor_products': 1 to {MAX_FACTORS} factors (or a square), got {factors!r}")
    for factor in factors:
        _check_parameter("factor_products", "factors", factor, "shape")
        if broadcast_shapes(_shape(factor), shape) != shape:
            raise ValueError(f"'factor_products': factor {factor} does not broadcast to shape {list(shape)}")

    def derive(a, *bs):
        return [a * a] * square + [a * b for b in bs]
    return [(shape, ARITH)] + [(_shape(f), ARITH) for f in factors], [(shape, ARITH)] * (square + len(factors)), derive


def _square(p):
    shape = _shape(p["shape"])
    return [(shape, ARITH)], [(shape, ARITH)], lambda a: [a * a]


def _product_trunc(p):
    shape, bits = _shape(p["shape"]), int(p["bits"])

    def derive(a, b, r):
        return [a * b + r] + truncation_mask_parts(r, bits)
    return [(shape, ARITH), (shape, ARITH), (shape, HIDDEN)], [(shape, ARITH), (shape, bits + 1), (shape, ARITH)], derive


def _trunc(p):
    shape, bits = _shape(p["shape"]), int(p["bits"])
    # r_top is read times 2^(63 - bits) (truncation.trunc_reconstruct): its low bits + 1
    return [(shape, ARITH)], [(shape, bits + 1), (shape, ARITH)], lambda r: truncation_mask_parts(r, bits)


MAX_AND_FACTORS = 1 << 10


def _and_products(p):
    words, factors, sets = int(p["words"]), int(p["factors"]), p["sets"]
    well_formed = all(isinstance(s, list) and len(s) >= 2 and s == sorted(set(s))
                      and all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < factors for k in s)
                      for s in sets)
    if len(sets) > 1 << 12 or not well_formed or len({tuple(s) for s in sets}) != len(sets):
        raise ValueError(f"'and_products': sets must be at most 4096 distinct sorted lists of two or more "
                         f"indices below {factors}, got {sets!r}")

    def derive(masks):
        out = torch.empty((len(sets), words), dtype=torch.int64)
        for j, s in enumerate(sets):
            out[j] = masks[s[0]]
            for k in s[1:]:
                out[j] &= masks[k]
        return [out]
    return [((factors, words), BINARY)], [((len(sets), words), BINARY)], derive


def _sign(p):
    """Comparison material (protocols/comparison.py) for |x| < 2^bits, digits of digit_bits."""
    shape, bits, digit_bits = _shape(p["shape"]), int(p["bits"]), int(p["digit_bits"])
    digits, words = -(-bits // digit_bits), words_for(math.prod(shape))

    def derive(r, s):
        beta = s & 1
        return [digit_planes(low_bits(r, bits), digit_bits, digits), pack_bits(bit(r, bits) ^ beta), beta]
    return [(shape, ARITH)] * 2, [((digits, 1 << digit_bits, words), BINARY), ((words,), BINARY), (shape, ARITH)], derive


def _select(p):
    return _with_factors(p, int(p["later"]))


def _with_factors(p, later: int):
    """"sign" plus a uniform a of shape `factor` and `later` more a_k of the full shape, with
    each one's product with beta."""
    shape, factor = _shape(p["shape"]), _shape(p["factor"])
    if broadcast_shapes(factor, shape) != shape:
        raise ValueError(f"'select': factor {list(factor)} does not broadcast to shape {list(shape)}")
    random, derived, derive_sign = _sign(p)

    def derive(r, s, *factors):
        out = derive_sign(r, s)
        return out + [a * out[2] for a in factors]
    return (random + [(factor, ARITH)] + [(shape, ARITH)] * later,
            derived + [(shape, ARITH)] * (1 + later), derive)


def _select_scales(p):
    """"select" over thresholds (shape [T, *factor]) and a truncation mask r of the factor's
    shape read at each of the T + 1 shifts, gated by the thresholds' bits (comparison.ThresholdScale)."""
    shape, factor, shifts = _shape(p["shape"]), _shape(p["factor"]), p["shifts"]
    _check_shifts("select_scales", "shifts", shifts)
    if len(shape) != len(factor) + 1 or shape[1:] != factor or len(shifts) != shape[0] + 1:
        raise ValueError(f"'select_scales': shape {list(shape)} must be [T, *factor] for factor "
                         f"{list(factor)}, with T + 1 shifts (got {len(shifts)})")
    random, derived, derive_select = _with_factors(p, 0)

    def derive(r, s, a, mask):
        out = derive_select(r, s, a)
        beta, top = out[2], msb(mask)
        mids = torch.stack([truncation_mask_parts(mask, m)[1] for m in shifts])
        return out + [top, *mids, beta * top, beta * mids[:-1], beta * mids[1:]]
    # r_top and its products with beta are read times 2^(63 - m_k): their low max(m_k) + 1 bits
    top = max(shifts) + 1
    gated = [(factor, top)] + [(factor, ARITH)] * len(shifts) + [(shape, top)] + [(shape, ARITH)] * 2
    return random + [(factor, ARITH)], derived + gated, derive


MAX_FUSED_TRUNCATIONS = 64
MAX_LATER_FACTORS = 8
MAX_FACTORS = 8


def _check_shifts(kind: str, name: str, shifts) -> None:
    if not isinstance(shifts, list) or not 1 <= len(shifts) <= MAX_FUSED_TRUNCATIONS or not all(
            isinstance(m, int) and not isinstance(m, bool) and 0 < m < RING_BITS - 2 for m in shifts):
        raise ValueError(f"{kind!r}: {name} must list 1 to {MAX_FUSED_TRUNCATIONS} shifts in "
                         f"(0, {RING_BITS - 2}), got {shifts!r}")


def _sign_gates(p):
    gates = p["gates"]
    _check_shifts("sign_gates", "gates", gates)
    shape = _shape(p["shape"])
    random, derived, derive_sign = _sign(p)

    def derive(r, s, *masks):
        out = derive_sign(r, s)
        beta = out[2]
        for mask, m in zip(masks, gates):
            top, mid = truncation_mask_parts(mask, m)
            out += [top, mid, top * beta, mid * beta]
        return out
    # a top bit and its product with beta are read times 2^(63 - m): their low m + 1 bits
    gated = [(shape, how) for m in gates for how in (m + 1, ARITH, m + 1, ARITH)]
    return random + [(shape, ARITH)] * len(gates), derived + gated, derive


def cross_terms(bits_i: int, bits_j: int, same: bool) -> int:
    """How many mask products a "trunc_products" pair (i, j) carries (see the module docstring)."""
    return 2 if same else 3 + (bits_i + bits_j > RING_BITS - 2)


def _trunc_products(p):
    shape, bits, pairs = _shape(p["shape"]), p["bits"], p["pairs"]
    _check_shifts("trunc_products", "bits", bits)
    if (not isinstance(pairs, list) or len(pairs) > MAX_FUSED_TRUNCATIONS ** 2
            or not all(isinstance(q, list) and len(q) == 2 and all(isinstance(i, int) and not isinstance(i, bool)
                                                                for i in q) and 0 <= q[0] <= q[1] < len(bits)
                       for q in pairs)
            or len({tuple(q) for q in pairs}) != len(pairs)):
        raise ValueError(f"'trunc_products': pairs must be distinct [i, j] with 0 <= i <= j < {len(bits)}, "
                         f"got {pairs!r}")

    def derive(*masks):
        tops, mids = zip(*(truncation_mask_parts(r, m) for r, m in zip(masks, bits)))
        out = [v for top, mid in zip(tops, mids) for v in (top, mid)]
        for i, j in pairs:
            terms = [mids[i] * mids[j], mids[i] * tops[j]]
            if i != j:
                terms.append(tops[i] * mids[j])
                if cross_terms(bits[i], bits[j], False) == 4:
                    terms.append(tops[i] * tops[j])
            out += terms
        return out
    # how much of each value FusedTruncations reads: a factor r_top_j comes with 2^(63 - m_j)
    derived = [(shape, how) for m in bits for how in (m + 1, ARITH)]
    for i, j in pairs:
        derived += [(shape, ARITH), (shape, bits[j] + 1)]
        if i != j:
            derived.append((shape, bits[i] + 1))
            if cross_terms(bits[i], bits[j], False) == 4:
                derived.append((shape, bits[i] + bits[j] - (RING_BITS - 2)))
    return [(shape, ARITH)] * len(bits), derived, derive


NOISE_KEY_WORDS = 4     # the dp_noise key: 4 ring elements, 256 bits


def _noise(sampler, exact: Fraction, shape: tuple):
    """A noise kind's layout: one key (random), the noise drawn by `sampler` on PRG(key) (derived)."""
    def derive(key):
        prg = PRG(key.contiguous().numpy().tobytes())
        return [torch.from_numpy(sampler(prg, exact, shape))]
    return [((NOISE_KEY_WORDS,), ARITH)], [(shape, ARITH)], derive


def _dp_noise(p):      # variance_fraction, laplace_scale_fraction check the sampler's range
    variance = variance_fraction(Fraction(p["variance_num"], p["variance_den"]))
    return _noise(discrete_gaussian, variance, _shape(p["shape"]))


def _dp_laplace(p):
    scale = laplace_scale_fraction(Fraction(p["scale_num"], p["scale_den"]))
    return _noise(discrete_laplace, scale, _shape(p["shape"]))


# kind -> params -> ([(shape, how)] random inputs, [(shape, how)] derived values, derive)
KINDS = {"triple": _triple, "matmul_triple": _matmul_triple, "matmul_grads": _matmul_grads,
         "factor_products": _factor_products, "square": _square, "trunc": _trunc, "product_trunc": _product_trunc,
         "and_products": _and_products,
         "sign": _sign, "select": _select, "select_scales": _select_scales, "sign_gates": _sign_gates,
         "trunc_products": _trunc_products, "dp_noise": _dp_noise, "dp_laplace": _dp_laplace}

MAX_DIMS = 16
MAX_EXTENT = 1 << 48     # elements a shape may span, counting only its non-zero sizes
# kind -> {parameter: "shape" or (least, greatest) integer}: every request is checked against it
PARAMETERS = {"triple": {"shape_a": "shape", "shape_b": "shape"},
              "matmul_triple": {"shape_a": "shape", "shape_b": "shape"},
              "matmul_grads": {"shape_a": "shape", "shape_b": "shape", "grad_a": (0, 1), "grad_b": (0, 1)},
              "factor_products": {"shape": "shape", "factors": "list", "square": (0, 1)},
              "square": {"shape": "shape"},
              "trunc": {"shape": "shape", "bits": (0, RING_BITS - 1)},
              "product_trunc": {"shape": "shape", "bits": (0, RING_BITS - 1)},
              "and_products": {"words": (0, 1 << 40), "factors": (1, MAX_AND_FACTORS), "sets": "list"},
              "sign": {"shape": "shape", "bits": (1, RING_BITS - 2), "digit_bits": (1, 8)},
              "select": {"shape": "shape", "bits": (1, RING_BITS - 2), "digit_bits": (1, 8), "factor": "shape",
                         "later": (0, MAX_LATER_FACTORS)},
              "select_scales": {"shape": "shape", "bits": (1, RING_BITS - 2), "digit_bits": (1, 8), "factor": "shape",
                                "shifts": "list"},
              "sign_gates": {"shape": "shape", "bits": (1, RING_BITS - 2), "digit_bits": (1, 8), "gates": "list"},
              "trunc_products": {"shape": "shape", "bits": "list", "pairs": "list"},
              "dp_noise": {"shape": "shape", "variance_num": (1, (1 << 62) - 1),
                           "variance_den": (1, 1 << 55)},
              "dp_laplace": {"shape": "shape", "scale_num": (1, (1 << 62) - 1), "scale_den": (1, (1 << 62) - 1)}}


def _check_parameter(kind: str, name: str, value, rule) -> None:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if rule == "list":       # checked by the kind itself
        if not isinstance(value, list):
            raise ValueError(f"{kind!r}: {name} must be a list, got {value!r}")
    elif rule == "shape":
        if (not isinstance(value, (list, tuple)) or len(value) > MAX_DIMS
                or not all(is_int(d) and 0 <= d < 1 << 40 for d in value)):
            raise ValueError(f"{kind!r}: {name} must be a list of at most {MAX_DIMS} sizes, got {value!r}")
        if math.prod(d for d in value if d) > MAX_EXTENT:   # even when empty: torch's strides
            raise ValueError(f"{kind!r}: {name} {value!r} spans more than {MAX_EXTENT} elements")
    elif not is_int(value) or not rule[0] <= value <= rule[1]:
        raise ValueError(f"{kind!r}: {name} must be an integer in [{rule[0]}, {rule[1]}], got {value!r}")


def _spec(kind: str, params: dict):
    """(random, derived, derive) of a checked request: unknown kinds, missing or extra
    parameters, values out of range and shapes that do not combine raise ValueError.
    Checked once per layout: a step asks for the same layouts every time."""
    return _checked_layout(kind, params)[1]


def _checked_layout(kind: str, params: dict) -> tuple:
    """(layout_id, _spec, canonical JSON) of a request, from one canonical form of it."""
    if kind not in KINDS:
        raise ValueError(f"unknown correlation kind {kind!r}; known: {sorted(KINDS)}")
    if not isinstance(params, dict) or set(params) != set(PARAMETERS[kind]):
        got = sorted(params) if isinstance(params, dict) else params
        raise ValueError(f"{kind!r} takes parameters {sorted(PARAMETERS[kind])}, got {got!r}")
    canonical = _canonical(kind, params)
    spec = _checked_spec(canonical)
    return _digest(canonical), spec, canonical


@functools.lru_cache(maxsize=4096)
def _checked_spec(canonical: str):
    kind, params = json.loads(canonical)
    for name, rule in PARAMETERS[kind].items():
        _check_parameter(kind, name, params[name], rule)
    try:
        return KINDS[kind](params)
    except BroadcastError as exc:
        raise ValueError(f"{kind!r}: shapes {params} do not combine ({exc})") from None


def _canonical(kind: str, params: dict) -> str:
    return json.dumps([kind, params], sort_keys=True, separators=(",", ":"))


def layout_id(kind: str, params: dict) -> str:
    """H(L): SHA-256 of the canonical JSON of (kind, params), the layout a correlation is bound to."""
    return _digest(_canonical(kind, params))


@functools.lru_cache(maxsize=4096)
def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()


# kinds whose every value has the shape of each of their shape parameters (packed bits: its
# words, last) where those are all one: a large correlation of one of them can be dealt in
# pieces of its elements ("select" where its factor has the whole shape)
ELEMENTWISE = ("square", "trunc", "product_trunc", "sign", "select", "sign_gates", "trunc_products")


def split_layout(kind: str, params: dict, max_elements: int) -> list | None:
    """The params of the pieces, each of at most max_elements ring elements, that a large
    elementwise correlation is dealt in: its elements in order, cut at multiples of 64 so that
    packed bits part at word boundaries. None where one request does."""
    if kind not in ELEMENTWISE:
        return None
    total, numel = _elements(_spec(kind, params)), math.prod(params["shape"])
    shapes = [name for name, rule in PARAMETERS[kind].items() if rule == "shape"]
    if total <= max_elements or numel <= 64 or any(list(params[name]) != list(params["shape"]) for name in shapes):
        return None
    chunk = max(64, max_elements // -(-total // numel) // 64 * 64)
    return [dict(params, **{name: [min(chunk, numel - start)] for name in shapes}) for start in range(0, numel, chunk)]


def join_pieces(kind: str, params: dict, pieces: list) -> "Correlation":
    """One correlation of layout (kind, params) from those of split_layout's pieces."""
    random, derived, _ = _spec(kind, params)

    def join(spec, parts):
        return [torch.cat([p[k] for p in parts], -1) if how == BINARY else
                torch.cat([p[k].reshape(-1) for p in parts]).reshape(shape)
                for k, (shape, how) in enumerate(spec)]
    return Correlation(join(_held(random), [p.random for p in pieces]),
                       lambda: join(derived, [p.derived() for p in pieces]))


def _held(random: list) -> list:
    """The random values the parties hold shares of (all but the HIDDEN ones), in order."""
    return [(shape, how) for shape, how in random if how != HIDDEN]


def _elements(spec) -> int:
    random, derived, _ = spec
    # exact (no int64 wrap-around); an empty tensor counts what its other sizes span, which
    # torch's strides must hold all the same
    return sum(math.prod(d for d in shape if d) for shape, _ in random + derived)


def _stream(seed: bytes, layout: str, number: int, epoch: int) -> PRG:
    return PRG(derive_seed(seed, "corr", layout, epoch, number))


class Correlation:
    """One party's shares of a correlation: `random` at once, `derived()` when first needed.

    Protocols use the random parts (masks) before their first exchange and the derived
    parts after it, so a party's wait for the dealer overlaps with that exchange.
    """

    def __init__(self, random: list, derived):
        self.random = random
        self._derived = derived

    def derived(self) -> list:
        if callable(self._derived):
            self._derived = self._derived()
        return self._derived

    def to(self, device) -> "Correlation":
        """The same shares on `device` (derived values moved when first needed)."""
        return Correlation([t.to(device) for t in self.random],
                           lambda: [t.to(device) for t in self.derived()])


SPLIT_FROM = 1 << 14      # elements: a smaller derived value is one run, party 0's


def correction_cuts(numel: int, world_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each party's run of a derived value's numel elements (flattened): n
    runs of ceil(numel / n) elements rounded up to even (whole 16-byte PRG blocks), the last
    ones shorter or empty. Below SPLIT_FROM elements, where the per-draw overhead of more
    pieces outweighs the bytes, party 0's run is all of them."""
    if numel < SPLIT_FROM:
        return [(0, numel)] + [(numel, numel)] * (world_size - 1)
    size = -(-numel // world_size)
    size += size % 2
    return [(min(numel, r * size), min(numel, (r + 1) * size)) for r in range(world_size)]


@functools.lru_cache(maxsize=8192)
def _party_runs(canonical: str, rank: int, world_size: int) -> tuple:
    """(cuts, elements, bytes): party `rank`'s run of each derived value of a checked layout
    (correction_cuts), their ring elements and their correction bytes (_width per element)."""
    derived = _checked_spec(canonical)[1]
    cuts = tuple(correction_cuts(math.prod(shape), world_size)[rank] for shape, _ in derived)
    elements = sum(stop - start for start, stop in cuts)
    return cuts, elements, sum((stop - start) * _width(how) for (start, stop), (_, how) in zip(cuts, derived))


def receives(kind: str, params: dict, rank: int, world_size: int) -> bool:
    """Whether party `rank` has a run of some derived value to be corrected by the dealer."""
    return _party_runs(_checked_layout(kind, params)[2], rank, world_size)[1] > 0


def _draw_around(prg: PRG, numel: int, cut: tuple, width: int = 8) -> torch.Tensor:
    """A party's draws of a derived value's numel elements (flat) but for its run `cut`, left
    unset; the run's stream positions are skipped, so the stream ends where a full draw would.
    A value read only mod 2^(8 width) (width < 8, see _width) is drawn in `width` bytes per
    element, zero-extended: its shares need be right in those bytes only."""
    start, stop = cut
    out = torch.empty(numel, dtype=torch.int64)
    _draw_into(prg, out[:start], width)
    prg.skip(width * (stop - start))
    _draw_into(prg, out[stop:], width)
    return out


def _draw_into(prg: PRG, out: torch.Tensor, width: int) -> None:
    if not out.numel():
        return
    if width == 8:
        prg.fill(out.numpy())
        return
    join_low_bytes(_narrow_draws(prg, out.numel(), width), width, out=out)


def _narrow_draws(prg: PRG, numel: int, width: int) -> torch.Tensor:
    """The stream's next numel values of `width` bytes each, as their bytes."""
    raw = torch.empty(numel * width, dtype=torch.uint8)
    prg.fill(raw.numpy())
    return raw


def party_correlation(kind: str, params: dict, number: int, seed: bytes, rank: int, world_size: int,
                      corrections=None, epoch: int = 0) -> Correlation:
    """This party's shares of correlation `number` of the layout (kind, params) in key `epoch`.

    Derived values come from the seed but for this party's runs (correction_cuts), which are
    the dealer's corrections (a list of flat tensors, one per derived value, or a callable
    returning it once they arrive; None where `receives` is False).
    """
    layout, (random, derived, _), canonical = _checked_layout(kind, params)
    prg = _stream(seed, layout, number, epoch)
    shares = []
    for shape, how in random:
        if how == HIDDEN:
            prg.skip(8 * math.prod(shape))
        else:
            shares.append(prg.ring(shape))
    cuts = _party_runs(canonical, rank, world_size)[0]
    if all(start == stop for start, stop in cuts):
        return Correlation(shares, lambda: [_draw_around(prg, math.prod(shape), (0, 0), _width(how)).reshape(shape)
                                            for shape, how in derived])

    def with_corrections():
        around = [_draw_around(prg, math.prod(shape), cut, _width(how)) for (shape, how), cut in zip(derived, cuts)]
        got = corrections() if callable(corrections) else corrections
        if got is None or len(got) != len(derived):
            raise ValueError(f"party {rank} needs {len(derived)} dealer corrections for {kind!r}")
        for tensor, (start, stop), value, (_, how) in zip(got, cuts, around, derived):
            width = _width(how)
            dtype, size = (torch.int64, stop - start) if width == 8 else (torch.uint8, (stop - start) * width)
            if tensor.dtype != dtype or tuple(tensor.shape) != (size,):
                raise ValueError(f"dealer correction for {kind!r} is {tensor.dtype} of shape "
                                 f"{tuple(tensor.shape)}, expected {dtype} of shape {(size,)}")
            if width == 8:
                value[start:stop] = tensor
            else:
                join_low_bytes(tensor, width, out=value[start:stop])
        return [value.reshape(shape) for value, (shape, _) in zip(around, derived)]
    return Correlation(shares, with_corrections)


def party_shares(kind: str, params: dict, number: int, seed: bytes, rank: int, world_size: int,
                 corrections=None, epoch: int = 0) -> list:
    """All of this party's shares of correlation `number` at once (random parts, then derived)."""
    correlation = party_correlation(kind, params, number, seed, rank, world_size, corrections, epoch)
    return correlation.random + correlation.derived()


def dealer_corrections(kind: str, params: dict, number: int, seeds, epoch: int = 0) -> list:
    """Every party's corrections, [party r's list of flat tensors]: on run r of each derived
    value, c_r = c - sum_{i != r} c_i (XOR for binary values); [] for a party without runs.
    Two parties' triples of one shape and truncation masks take one pass (_two_party_kernel)."""
    layout, (random, derived, derive), canonical = _checked_layout(kind, params)
    n = len(seeds)
    streams = [_stream(seeds[i], layout, number, epoch) for i in range(n)]
    cuts = [correction_cuts(math.prod(shape), n) for shape, _ in derived]
    fused = _two_party_kernel(kind, params, random, n)
    if fused is None:
        corrections = _corrections(streams, random, derived, derive, cuts)
    else:
        corrections = fused(*_two_party_draws(streams, random, derived, cuts))
    units = [_unit(how) for _, how in derived]
    return [[c[unit * value_cuts[r][0]:unit * value_cuts[r][1]] for c, unit, value_cuts in zip(corrections, units, cuts)]
            if _party_runs(canonical, r, n)[1] else [] for r in range(n)]


def _unit(how: int) -> int:
    """Entries of a correction tensor per element: its width in bytes if narrow (uint8), else 1."""
    width = _width(how)
    return 1 if width == 8 else width


def _corrections(streams: list, random: list, derived: list, derive, cuts: list) -> list:
    """Each derived value, flat, less every stream's draws of it outside that stream's run: in
    full as int64, or its low _width(how) bytes (uint8) where narrow."""
    values = []
    for shape, how in random:
        value = streams[0].ring(shape)
        for prg in streams[1:]:
            (value.bitwise_xor_ if how == BINARY else value.add_)(prg.ring(shape))
        values.append(value)
    corrected = [value.view(-1) for value in _owned(derive(*values))]
    for i, prg in enumerate(streams):          # each stream's derived values, in order
        for value, (_, how), value_cuts in zip(corrected, derived, cuts):
            start, stop = value_cuts[i]
            _remove_draws(prg, value[:start], how)
            prg.skip(_width(how) * (stop - start))
            _remove_draws(prg, value[stop:], how)
    return [value if _width(how) == 8 else low_bytes(value, _width(how)) for value, (_, how) in zip(corrected, derived)]


def _two_party_draws(streams: list, random: list, derived: list, cuts: list) -> tuple:
    """Two streams' draws, as _corrections makes them: each random value's as rows [2, numel];
    each derived value's, flat, by the party whose run an element is not in (in _unit(how)
    entries an element)."""
    drawn_random = [torch.empty((2, math.prod(shape)), dtype=torch.int64) for shape, _ in random]
    for both in drawn_random:
        for prg, row in zip(streams, both):
            prg.fill(row.numpy())
    drawn = [torch.empty(math.prod(shape) * _unit(how), dtype=torch.int64 if _width(how) == 8 else torch.uint8)
             for shape, how in derived]
    for i, prg in enumerate(streams):          # each stream's derived values, in order
        for values, (_, how), value_cuts in zip(drawn, derived, cuts):
            (start, stop), unit = value_cuts[i], _unit(how)
            if start:
                prg.fill(values[:unit * start].numpy())
            prg.skip(_width(how) * (stop - start))
            if stop * unit < values.numel():
                prg.fill(values[unit * stop:].numpy())
    return drawn_random, drawn


def _two_party_kernel(kind: str, params: dict, random: list, n: int):
    """The one-pass kernel of a kind's corrections from two parties' draws (_two_party_draws),
    (random draws, derived draws) -> corrections, or None where the general pass runs: more
    parties, random values of different shapes (broadcasting), or a full-width r_top."""
    if n != 2 or len({shape for shape, _ in random}) != 1:
        return None
    if kind == "triple":
        return lambda random, drawn: [triple_corrections(*random, *drawn)]
    if kind in ("trunc", "product_trunc") and _width(int(params["bits"]) + 1) < 8:
        bits = int(params["bits"])
        if kind == "trunc":
            return lambda random, drawn: truncation_mask_corrections(random[0], bits, drawn[0], _width(bits + 1),
                                                                     drawn[1])
        return lambda random, drawn: truncation_mask_corrections(random[2], bits, drawn[1], _width(bits + 1),
                                                                 drawn[2], product=(*random[:2], drawn[0]))
    return None


def _remove_draws(prg: PRG, part: torch.Tensor, how: int) -> None:
    """part -= the stream's next draws of it (XOR for binary values), as _draw_into draws them:
    in _width(how) bytes per element, subtracted as they are joined (one pass)."""
    if not part.numel():
        return
    width = _width(how)
    if width < 8:
        sub_low_bytes(part, _narrow_draws(prg, part.numel(), width), width)
        return
    draws = torch.empty(part.numel(), dtype=torch.int64)
    prg.fill(draws.numpy())
    (part.bitwise_xor_ if how == BINARY else part.sub_)(draws)


def _owned(tensors: list) -> list:
    """The tensors, each copied where it shares memory with an earlier one or is not contiguous
    (a broadcast view), so that each can be updated in place on its own."""
    out, seen = [], set()
    for t in tensors:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return out


class _Answer:
    """One correlation's corrections, computed by the first of its parties to ask (or ahead of
    them, CorrelationDealer.work_ahead) and kept until each party with runs has taken them;
    `counted`: the bytes of the runs counted as held, by rank, until that party takes them."""

    def __init__(self, takers: set, counted: dict):
        self.takers, self.counted = takers, counted
        self.ready, self.parts, self.error = threading.Event(), None, None


class CorrelationDealer:
    """The dealer process's request handler: each party's corrections, each answered once.

    A request names a layout (kind, params), the key epoch e and the number k of the
    correlation of that layout; the dealer counts every party's answers per layout in the
    current epoch itself and refuses any k but that party's next one and any earlier epoch (a
    later one starts its counts afresh), so no correlation is answered twice, and pads are
    bound to their layout, so answers for different layouts share none. The first party to
    ask for a correlation has it computed (dealer_corrections); the others' runs wait for them.
    While no request waits, the dealer works ahead (work_ahead): the next correlation of each
    layout asked for twice or more, which a training loop's next step asks for again.
    A party that deviates (asks for other layouts, ahead of time, or out of order) learns only
    its own shares of fresh correlations: never another party's pads, masks or shares; it can
    waste the dealer's work (each request is bounded by max_elements) and memory (the runs
    kept for the others and those computed ahead: at most max_held_bytes, beyond which first
    requests are refused) or spoil the computation's result, as any semi-honest party that
    stops following the protocol can.
    """

    def __init__(self, max_elements: int = 1 << 28, max_held_bytes: int = 1 << 32):
        self.max_elements, self.max_held_bytes = max_elements, max_held_bytes
        self._held_bytes = 0                       # bytes of the runs kept for other parties
        self._answered = collections.Counter()     # (rank, layout) -> answered in this epoch
        self._answers = {}                         # (layout, number) -> _Answer not taken by all
        self._next = collections.OrderedDict()     # repeated layout -> (next number, kind, params, canonical)
        self._ahead = collections.OrderedDict()    # (layout, number) -> _Answer worked out ahead, not asked yet
        self._epoch = 0
        self._lock = threading.Lock()
        self._computing = threading.Lock()          # one correlation at a time, whoever asks

    def __call__(self, rank: int, kind: str, params: dict, seq: int, seeds) -> list:
        if not isinstance(params, dict) or "number" not in params:
            raise ValueError(f"a correlation request names its layout and number, got {params!r}")
        layout, number, epoch = dict(params), params["number"], params.get("epoch", 0)
        del layout["number"]
        layout.pop("epoch", None)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"a key epoch is an integer >= 0, got {epoch!r}")
        (key, spec, canonical), n = _checked_layout(kind, layout), len(seeds)
        if _elements(spec) > self.max_elements:
            raise ValueError(f"{kind!r} {layout} asks for {_elements(spec)} ring elements, "
                             f"more than this dealer's limit of {self.max_elements}")
        runs = [_party_runs(canonical, r, n)[2] for r in range(n)]     # correction bytes per party
        if not runs[rank]:
            raise ValueError(f"party {rank} receives no corrections for {kind!r} {layout}")
        with self._lock:
            if epoch < self._epoch:
                raise ValueError(f"{kind!r} {layout}: asked for key epoch {epoch}, but epoch {self._epoch} "
                                 f"has begun (an epoch is never served again)")
            if epoch > self._epoch:
                self._epoch, self._answered, self._answers = epoch, collections.Counter(), {}
                self._ahead.clear()
                self._next.clear()
                self._held_bytes = 0
            expected = self._answered[(rank, key)]
            if number != expected:
                raise ValueError(f"{kind!r} {layout}: asked for correlation #{number!r} of this "
                                 f"layout, but the next one is #{expected} (each is answered once, in order)")
            answer = self._answers.get((key, number))
            self._ahead.pop((key, number), None)
            first = answer is None
            if first:
                answer = self._hold(key, number, runs, rank, self.max_held_bytes)
                if answer is None:
                    raise ValueError(f"{kind!r} {layout}: the dealer already holds {self._held_bytes} bytes "
                                     f"of answers the other parties have not asked for (limit {self.max_held_bytes})")
            self._answered[(rank, key)] += 1
            if number and self._next.get(key, (0,))[0] <= number:     # a loop: its next one is worth computing
                self._next[key] = (number + 1, kind, layout, canonical)
        if first:
            self._compute(answer, kind, layout, number, seeds, epoch)
        answer.ready.wait()
        if answer.error is not None:      # the computing thread's exception; every asker gets it
            raise (ValueError if isinstance(answer.error, ValueError) else RuntimeError)(str(answer.error))
        with self._lock:
            answer.takers.discard(rank)
            self._held_bytes = max(0, self._held_bytes - answer.counted.pop(rank, 0))
            if not answer.takers and self._answers.get((key, number)) is answer:
                del self._answers[(key, number)]
        return answer.parts[rank]

    def work_ahead(self, seeds, busy) -> None:
        """Compute, one at a time until busy() (a request came), the next correlation of each
        layout asked for twice or more in this epoch that nobody has asked for yet, and keep it
        until its parties ask: the next step of a loop then finds its correlations ready. Work
        ahead holds at most half of max_held_bytes, and a request that needs room drops the
        oldest of it that nobody asked for. The dealer service calls this while a party's
        connection is idle."""
        while not busy():
            with self._lock:
                job = self._next_ahead(len(seeds))
            if job is None:
                return
            answer, kind, layout, number, epoch = job
            try:
                self._compute(answer, kind, layout, number, seeds, epoch)
            except Exception:  # noqa: BLE001 - kept in the answer: its askers get the error
                pass

    def _next_ahead(self, n: int):
        """(answer, kind, layout, number, epoch) of a correlation to compute ahead, held; or None
        (the layouts waiting in _next, oldest first; one that does not fit waits for its next
        request). Call locked."""
        while self._next:
            key, (number, kind, layout, canonical) = self._next.popitem(last=False)
            if (key, number) in self._answers or max(self._answered[(r, key)] for r in range(n)) > number:
                continue
            runs = [_party_runs(canonical, r, n)[2] for r in range(n)]
            answer = self._hold(key, number, runs, None, self.max_held_bytes // 2)
            if answer is not None:
                self._ahead[(key, number)] = answer
                return answer, kind, layout, number, self._epoch
        return None

    def _hold(self, key, number: int, runs: list, rank, limit: int):
        """A new _Answer for (key, number), the runs of every party with some but `rank` (the
        asker, None when working ahead) counted as held; None beyond `limit` held bytes, even
        after a request (rank given) dropped the finished work ahead that nobody asked for.
        Call locked."""
        counted = {r: b for r, b in enumerate(runs) if b and r != rank}
        while rank is not None and self._held_bytes + sum(counted.values()) > limit and self._drop_ahead():
            pass
        if self._held_bytes + sum(counted.values()) > limit:
            return None
        self._held_bytes += sum(counted.values())
        answer = self._answers[(key, number)] = _Answer({r for r, b in enumerate(runs) if b}, counted)
        return answer

    def _drop_ahead(self) -> bool:
        """Drop the oldest finished work ahead that nobody asked for; False if there is none."""
        for ahead, answer in self._ahead.items():
            if answer.ready.is_set():
                del self._ahead[ahead]
                del self._answers[ahead]
                self._held_bytes -= sum(answer.counted.values())
                return True
        return False

    def _compute(self, answer: _Answer, kind, layout, number, seeds, epoch) -> None:
        try:
            with self._computing:
                answer.parts = dealer_corrections(kind, layout, number, seeds, epoch)
        except Exception as exc:
            answer.error = exc
            raise
        finally:
            answer.ready.set()


def correction_bytes(kind: str, params: dict, rank: int | None = None, world_size: int = 1) -> int:
    """Bytes of the dealer's corrections for one correlation of this layout: all of them (the
    derived values), or party `rank`'s runs among world_size parties."""
    _, (_, derived, _), canonical = _checked_layout(kind, params)
    if rank is None:
        return sum(int(np.prod(shape, dtype=np.int64)) * _width(how) for shape, how in derived)
    return _party_runs(canonical, rank, world_size)[2]


def random_count(kind: str, params: dict) -> int:
    """How many of a party's tensors of a correlation are random inputs (they come first)."""
    return len(_held(_spec(kind, params)[0]))
