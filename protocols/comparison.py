"""Comparison: the sign of shared values, ReLU, select and max, with a dealer.

sign_bit(x) gives arithmetic shares of s = [x < 0] for |x| < 2^L (L = `bits`, default 62).
With dealer material r (uniform), one-hot digit planes of r mod 2^L, the masked bit
bit_L(r) XOR beta and a random bit beta in arithmetic form:
  1. open c = x + 2^L + r mod 2^(L+1) (only the low bits of each share travel); x' = x + 2^L
     lies in [0, 2^(L+1)) and x >= 0 iff bit_L(x') = 1,
     where bit_L(x') = bit_L(c) XOR bit_L(r) XOR borrow, borrow = [c mod 2^L < r mod 2^L];
  2. compare digit by digit (base 2^digit_bits): for each digit the one-hot planes give XOR
     shares of [c_g < r_g] and [c_g == r_g] locally, since c is public; combine the digits
     in a tree whose every level joins G consecutive blocks in one round (binary.and_products),
     lt = lt_0 XOR_(i>0) (eq_0 AND ... AND eq_(i-1) AND lt_i), eq = AND_i eq_i (block 0 the
     most significant); G of 2 to 4 (tree_group_for) trades rounds against the dealer's
     products of masks (up to 2^(G+1) - 2G - 2 bits per group and value: 2, 8, 22);
  3. open p = borrow XOR bit_L(r) XOR beta and convert: s = 1 XOR bit_L(c) XOR p XOR beta,
     linear in the arithmetic shares of beta.
Everything opened is uniform (c, the AND maskings, p), so only s's shares result.
A coarse comparison (resolution_bits = k > 0) runs the same steps on x~ = sum_i floor(x_i / 2^k)
= floor(x / 2^k) - e, e in [0, n-1] (each party shifts its own share; the wrap of the shares'
sum is a multiple of 2^(64-k), invisible mod 2^(L-k+1)), over L - k bits: fewer digits, bytes
and often a round. Its bit is [x < 0] except for x in [0, (n-1) 2^k), where it may be 1.
relu/select reuse step 1's round to open x - a for a dealer pair (a, a*beta), making
x * s local: relu(x) = x - x*s exact, with no truncation; below_thresholds likewise makes
x [x < t_j] local for many public t_j, opening x - a once. Select.times multiplies s by a
value known only later for one opening of it, masked (half a Beaver product); SignGate
multiplies s by values truncated later, locally (their docstrings).
Rounds: 2 + ceil(log_G(ceil((L - k) / digit_bits))), digit_bits = digit_bits_for(number of
values, L - k) unless given. Bytes: sign_cost(n, numel, L - k).
"""
import functools
import math

import torch

from mpcft.kernels.bits import compare_leaves, unpack_bits, words_for
from mpcft.kernels.fused import beta_times_truncated, gated_truncation, sign_coefficients, trunc_reconstruct
from mpcft.kernels.ring import RING_BITS, low_bits

from .binary import and_products, and_products_cost, open_bits, product_sets
from .cost import FREE, Cost, open_cost
from .sharing import open_low, open_low_cost
from .truncation import open_masked, truncate_cost, truncations_cost

FULL_BITS = 62   # any |x| < 2^62, the range of truncation
DIGIT_BITS = 4            # the narrowest digit considered: 16-bit one-hot planes (2 bytes)
WIDEST_DIGIT_BITS = 8
# A round costs about what 250 kB from the dealer do, on a LAN (0.2 ms, 10 Gbit/s) and on a
# WAN (20 ms, 100 Mbit/s) alike (benchmarks/wan.py's links)
ROUND_BYTES = 250_000


def digit_bits_for(numel: int, bits: int = FULL_BITS) -> int:
    """The digit width of a comparison of numel values over `bits` bits: of 4 to 8 bits, the
    one whose digit tree's rounds and dealer bytes (the one-hot planes, numel * digits * 2^d / 8,
    and the tree's products of masks) cost least, a round priced at ROUND_BYTES, with the tree's
    grouping chosen for it (tree_group_for); the narrower on a tie. Wide digits pay where
    values are few (32 bits of at most ~2,000 values: 8-bit digits)."""
    def price(width):
        digits = -(-bits // width)
        return _tree_price(numel, digits, tree_group_for(numel, digits)) + numel * digits * (1 << width) // 8
    return min(range(DIGIT_BITS, WIDEST_DIGIT_BITS + 1), key=lambda width: (price(width), width))


TREE_GROUPS = (2, 3, 4)     # blocks that one level of the digit tree joins


def tree_group_for(numel: int, digits: int) -> int:
    """G of the digit tree for numel values: the fewest rounds (priced at ROUND_BYTES) plus the
    dealer's products of masks (a bit per value each), the smaller G on a tie."""
    return min(TREE_GROUPS, key=lambda group: (_tree_price(numel, digits, group), group))


def _tree_price(numel: int, digits: int, group: int) -> int:
    levels = _tree_levels(digits, group)
    return len(levels) * ROUND_BYTES + numel * sum(sets for _, sets in levels) // 8


def resolution_bits_within(n: int, budget_bits: int, repeats: int = 1) -> int:
    """The largest resolution k (>= 0) whose error band, repeated `repeats` times, fits the
    budget: repeats (n - 1) 2^k <= 2^budget_bits."""
    return max(0, budget_bits - math.ceil(math.log2(max(1, repeats * (n - 1)))))


@functools.lru_cache(maxsize=None)
def _tree_level(blocks: int, group: int) -> tuple:
    """One level of the digit tree over `blocks` (lt, eq) pairs, most significant first, joined
    `group` at a time: (factors, monomials, outputs). factors: ("lt" or "eq", block) opened
    masked; monomials: factor indices for binary.and_products; outputs, one per new block:
    (block whose lt starts it, monomials XORed into lt, monomial of eq or None where nobody
    needs it: the lowest group's, or "same" for a block passed through)."""
    factors, monomials, outputs = [], [], []
    for start in range(0, blocks, group):
        end = min(start + group, blocks)
        if end - start == 1:
            outputs.append((start, (), "same"))
            continue
        eq_needed = end < blocks                  # the lowest group's eq is never used
        eqs = {}
        for j in range(start, end - 1 + eq_needed):
            eqs[j] = len(factors)
            factors.append(("eq", j))
        terms = []
        for i in range(start + 1, end):
            factors.append(("lt", i))
            monomials.append(tuple(eqs[j] for j in range(start, i)) + (len(factors) - 1,))
            terms.append(len(monomials) - 1)
        if eq_needed:
            monomials.append(tuple(eqs[j] for j in range(start, end)))
        outputs.append((start, tuple(terms), len(monomials) - 1 if eq_needed else None))
    return tuple(factors), tuple(monomials), tuple(outputs)


@functools.lru_cache(maxsize=None)
def _tree_levels(digits: int, group: int) -> tuple:
    """Per level of the digit tree: (factors opened per word, products of masks per word)."""
    levels, blocks = [], digits
    while blocks > 1:
        factors, monomials, outputs = _tree_level(blocks, group)
        levels.append((len(factors), len(product_sets(monomials))))
        blocks = len(outputs)
    return tuple(levels)


def sign_cost(n: int, numel: int, bits: int = FULL_BITS, digit_bits: int | None = None,
              factor: int = 0) -> Cost:
    """Cost of sign_bit; factor: elements of a factor whose product with the bit is made local
    (select_negative, relu: numel; below_thresholds: the compared value's), opened whole
    beside the first round."""
    digit_bits = digit_bits or digit_bits_for(numel, bits)
    words, digits = words_for(numel), -(-bits // digit_bits)
    total = open_low_cost(n, [(numel, bits + 1)] + ([(factor, 64)] if factor else []))
    for factors, _ in _tree_levels(digits, tree_group_for(numel, digits)):
        total = total + and_products_cost(n, words, factors)
    return total + open_cost(n, words)      # the opening of p


def _sign(ctx, x: torch.Tensor, bits: int, digit_bits: int, factor: torch.Tensor | None = None,
          gates: list | None = None, resolution_bits: int = 0, shifts: list | None = None, later: int = 0):
    """Arithmetic-share coefficients (A, B) with s = A + B*beta, beta, y*beta for the factor y
    (broadcastable to x; None if no factor) and the correlation ("select" with a factor and
    `later` pairs for Select.times, "select_scales" with a factor and `shifts`, "sign_gates"
    where `gates` lists truncation shifts, "sign" otherwise). With a factor, y - a is opened in
    the first round for the dealer's pair (a, a*beta): y*beta = (y - a)*beta + a*beta."""
    if not 1 <= bits <= FULL_BITS:
        raise ValueError(f"comparison bits must be in [1, {FULL_BITS}], got {bits}")
    if not 0 <= resolution_bits < bits:
        raise ValueError(f"resolution_bits must be in [0, {bits}), got {resolution_bits}")
    x_high, bits = x >> resolution_bits, bits - resolution_bits     # x~ (module docstring)
    shape, numel = x.shape, x.numel()
    digit_bits = digit_bits or digit_bits_for(numel, bits)
    layout = dict(shape=list(shape), bits=bits, digit_bits=digit_bits)
    if gates:
        correlation = ctx.correlation("sign_gates", **layout, gates=list(gates))
    elif shifts:
        correlation = ctx.correlation("select_scales", **layout, factor=list(factor.shape), shifts=list(shifts))
    elif factor is not None:
        correlation = ctx.correlation("select", **layout, factor=list(factor.shape), later=later)
    else:
        correlation = ctx.correlation("sign", **layout)
    r = correlation.random[0]
    first = ctx.rank == 0
    c_share = x_high + r + (1 << bits) if first else x_high + r
    # only c mod 2^(bits+1) is used: each party sends those bits + 1 bits of its share, packed
    parts = [(c_share, bits + 1)] + ([(factor - correlation.random[2], RING_BITS)] if factor is not None else [])
    opened = open_low(ctx, parts)
    c = opened[0]
    onehot, masked_rbit, beta = correlation.derived()[:3]
    factor_beta = opened[1] * beta + correlation.derived()[3] if factor is not None else None
    # leaves: XOR shares of [c_g < r_g] and [c_g == r_g] for every digit g (local: c is public)
    lt, eq = compare_leaves(low_bits(c, bits), onehot, digit_bits)
    borrow = _borrow_tree(ctx, list(lt.flip(0)), list(eq.flip(0)), tree_group_for(numel, len(lt)))
    p = unpack_bits(open_bits(ctx, borrow ^ masked_rbit), numel).reshape(shape)
    # q = 1 - bit `bits` of c is public: s = q XOR (p XOR beta), and with p XOR beta =
    # p + (1 - 2p) beta, s = A + B * beta for A = q + (1 - 2q) p, B = (1 - 2q)(1 - 2p)
    coeff_a, coeff_b = sign_coefficients(c, p, bits)
    return coeff_a, coeff_b, beta, factor_beta, correlation


def _borrow_tree(ctx, lt: list, eq: list, group: int) -> torch.Tensor:
    """Combine per-digit (lt, eq), most significant first, into XOR shares of [c_low < r_low],
    `group` blocks a level, a round each (_tree_level)."""
    while len(lt) > 1:
        factors, monomials, outputs = _tree_level(len(lt), group)
        z = and_products(ctx, torch.stack([(lt if kind == "lt" else eq)[j] for kind, j in factors]),
                         [list(m) for m in monomials])
        joined_lt, joined_eq = [], []
        for start, terms, eq_out in outputs:
            value = lt[start]
            for t in terms:
                value = value ^ z[t]
            joined_lt.append(value)
            joined_eq.append(eq[start] if eq_out == "same" else None if eq_out is None else z[eq_out])
        lt, eq = joined_lt, joined_eq
    return lt[0]


def _constant(ctx, value: torch.Tensor) -> torch.Tensor:
    """Party 0's share of a public ring tensor."""
    return value if ctx.rank == 0 else torch.zeros_like(value)


def sign_bit(ctx, x: torch.Tensor, bits: int = FULL_BITS, digit_bits: int | None = None) -> torch.Tensor:
    """Arithmetic shares (scale 1, not fixed point) of [x < 0], for |x| < 2^bits."""
    coeff_a, coeff_b, beta, *_ = _sign(ctx, x, bits, digit_bits)
    return _constant(ctx, coeff_a) + coeff_b * beta


class SignGate:
    """s = [x < 0] (sign_bit; coarse with resolution_bits k > 0, as in the module docstring),
    and truncations of later values that s multiplies locally.

    A truncated y = P + M (protocols/truncation.py: P public once its c is open,
    M = -r_mid + t (1 - 2 c_top) r_top, t = 2^(63-m)) and s = A + B beta (A, B public) give
      y s = A y + B (P beta + t (1 - 2 c_top) r_top beta - r_mid beta),
    local from the dealer's r_top beta and r_mid beta ("sign_gates"): gating a truncated value
    by a comparison costs the truncation's round and no Beaver product. Reveals what sign_bit
    and truncate reveal: uniform openings. Cost: sign_gate_cost(n, numel, bits, gates).

        gate = SignGate(ctx, z, bits=14, gates=[36])   # the comparison's rounds; gate.bit = [z < 0]
        (w,) = gate.truncate([v])                      # one round: w = (v / 2^36) * [z < 0]
    """

    def __init__(self, ctx, x: torch.Tensor, bits: int, gates: list, digit_bits: int | None = None,
                 resolution_bits: int = 0):
        self.ctx, self.gates = ctx, [int(m) for m in gates]
        self._a, self._b, self._beta, _, self._correlation = _sign(ctx, x, bits, digit_bits, gates=self.gates,
                                                                   resolution_bits=resolution_bits)
        self.bit = _constant(ctx, self._a) + self._b * self._beta
        self._truncated = False

    def truncate(self, values: list) -> list:
        """[(values[k] / 2^gates[k]) * s]: one opening for all, once."""
        if self._truncated or len(values) != len(self.gates):
            raise ValueError(f"a SignGate truncates its {len(self.gates)} values once, together")
        self._truncated = True
        ctx, first = self.ctx, self.ctx.rank == 0
        masks = self._correlation.random[2:]
        opened = open_masked(ctx, [(v, r, m) for v, r, m in zip(values, masks, self.gates)])
        derived = self._correlation.derived()[3:]
        out = []
        for k, (c, m) in enumerate(zip(opened, self.gates)):
            top, mid, top_beta, mid_beta = derived[4 * k:4 * k + 4]
            out.append(gated_truncation(c, top, mid, top_beta, mid_beta, self._a, self._b, self._beta, m, first))
        return out


def sign_gate_cost(n: int, numel: int, bits: int, gates: list, digit_bits: int | None = None) -> Cost:
    """Cost of SignGate and its truncate (by the shifts `gates`): the comparison, then one
    truncation round (bits: those compared, L - k)."""
    return sign_cost(n, numel, bits, digit_bits) + truncations_cost(n, [(numel, m) for m in gates])


def select_negative(ctx, x: torch.Tensor, bits: int = FULL_BITS, digit_bits: int | None = None,
                    resolution_bits: int = 0):
    """Shares of x * s and of s = [x < 0] (coarse where resolution_bits > 0: the module
    docstring), in sign_bit's rounds (x*s is local). Cost: sign_cost(n, numel, bits - k, factor=numel)."""
    select = Select(ctx, x, bits, digit_bits, resolution_bits)
    return select.negative_part, select.bit


class Select:
    """select_negative's s = [x < 0] and x s, and products y s of up to `later` values y of x's
    shape computed after the comparison: for each, the dealer adds a pair (a_k, a_k beta) to
    the comparison's correlation ("select" with later), and s = A + B beta gives
      y s = A y + B ((y - a_k) beta + a_k beta),
    one opening of y - a_k (8 bytes per element to each peer, a round): half a Beaver
    product's bytes, and as many dealer bytes as one. Reveals what select_negative does and
    the uniform y - a_k. Cost: sign_cost(n, numel, bits - k, factor=numel), and
    select_times_cost per times().

        select = Select(ctx, x, later=1)        # select.bit = [x < 0], select.negative_part = x [x < 0]
        y_negative = select.times(y)            # y [x < 0], one round
    """

    def __init__(self, ctx, x: torch.Tensor, bits: int = FULL_BITS, digit_bits: int | None = None,
                 resolution_bits: int = 0, later: int = 0):
        self.ctx, self.shape = ctx, x.shape
        self._a, self._b, self._beta, x_beta, self._correlation = _sign(
            ctx, x, bits, digit_bits, x, None, resolution_bits, later=later)
        self.negative_part = self._a * x + self._b * x_beta
        self.bit = _constant(ctx, self._a) + self._b * self._beta
        self._unused = list(range(later))

    def times(self, y: torch.Tensor) -> torch.Tensor:
        """Shares of y s (y of x's shape, any scale: no truncation), with the next unused pair."""
        if y.shape != self.shape:
            raise ValueError(f"Select.times takes values of the compared shape {tuple(self.shape)}, got {tuple(y.shape)}")
        if not self._unused:
            raise ValueError("this Select has no pair left for times(): ask for more with later=")
        k = self._unused.pop(0)
        (masked,) = open_low(self.ctx, [(y - self._correlation.random[3 + k], RING_BITS)])
        y_beta = masked * self._beta + self._correlation.derived()[4 + k]
        return self._a * y + self._b * y_beta


def select_times_cost(n: int, numel: int) -> Cost:
    """Select.times of numel values: one opening of full ring elements."""
    return open_low_cost(n, [(numel, RING_BITS)])


def below_thresholds(ctx, x: torch.Tensor, thresholds: list, bits: int = FULL_BITS):
    """s_j = [x < t_j] for public reals t_j, stacked on a new first dimension, and x * s_j:
    one comparison of the stacked x - t_j (valid for |x - t_j| < 2^bits) in sign_bit's rounds,
    x opened masked once beside its first round so that every x * s_j is local.
    Cost: sign_cost(n, len(thresholds) * numel, bits, factor=numel)."""
    below, x_below, *_ = _below(ctx, x, thresholds, bits)
    return below, x_below


def _below(ctx, x: torch.Tensor, thresholds: list, bits: int, shifts: list | None = None):
    """below_thresholds' (s_j, x s_j), then A, B, beta and the correlation ("select_scales"
    with `shifts`: ThresholdScale)."""
    t = torch.stack([x + ctx.public(-float(v)) for v in thresholds])
    coeff_a, coeff_b, beta, x_beta, correlation = _sign(ctx, t, bits, None, x, shifts=shifts)
    return (_constant(ctx, coeff_a) + coeff_b * beta, coeff_a * x + coeff_b * x_beta,
            coeff_a, coeff_b, beta, correlation)


class ThresholdScale:
    """x's interval among public thresholds t_1 < ... < t_T and, later, a value scaled by it.

    below_thresholds gives s_j = [x < t_j] and x s_j; the one-hot of the interval is
    o_k = b_k - b_(k+1) with b_0 = 1, b_j = 1 - s_j, b_(T+1) = 0. truncate(v) then returns
    sum_k o_k Y_k, Y_k = v / 2^(shifts[k]) (a public power of two per interval), in one
    truncation round: with one mask r opened once, Y_k = P_k + M_k (protocols/truncation.py)
    for every shift, and
      sum_k o_k Y_k = Y_T - sum_j s_j (Y_j - Y_(j-1)),   s_j Y = A_j Y + B_j beta_j Y,
      beta_j Y_k = P_k beta_j + t_k (1 - 2 c_top) r_top beta_j - r_mid_k beta_j,
    local from the dealer's r_top beta_j, r_mid_(j-1) beta_j and r_mid_j beta_j
    ("select_scales"). It replaces a truncation, a Beaver product and a second truncation by
    one truncation round, for about 4 T + 2 dealer values per element of x. Reveals what
    below_thresholds and truncate reveal: uniform openings. Cost: threshold_scale_cost.
    """

    def __init__(self, ctx, x: torch.Tensor, thresholds: list, bits: int, shifts: list):
        if len(shifts) != len(thresholds) + 1:
            raise ValueError(f"{len(thresholds)} thresholds make {len(thresholds) + 1} intervals, "
                             f"got {len(shifts)} shifts")
        self.ctx, self.shifts = ctx, [int(m) for m in shifts]
        self.below, self.x_below, self._a, self._b, self._beta, self._correlation = _below(
            ctx, x, thresholds, bits, self.shifts)
        self._truncated = False

    def truncate(self, value: torch.Tensor) -> torch.Tensor:
        """sum_k o_k (value / 2^shifts[k]) for `value` of x's shape: one opening, once."""
        if self._truncated:
            raise ValueError("a ThresholdScale truncates one value, once")
        self._truncated = True
        ctx, first = self.ctx, self.ctx.rank == 0
        mask = self._correlation.random[3]
        (c,) = open_masked(ctx, [(value, mask, min(self.shifts))])
        top, *rest = self._correlation.derived()[4:]
        mids, (top_beta, prev_beta, next_beta) = rest[:len(self.shifts)], rest[len(self.shifts):]
        m = self.shifts
        ys = [trunc_reconstruct(c, top, mid, shift, first) for mid, shift in zip(mids, m)]
        # threshold j (0-based) separates intervals j and j + 1
        steps = torch.stack([ys[j + 1] - ys[j] for j in range(len(ys) - 1)])
        beta_steps = torch.stack([
            beta_times_truncated(c, m[j + 1], self._beta[j], top_beta[j], next_beta[j])
            - beta_times_truncated(c, m[j], self._beta[j], top_beta[j], prev_beta[j]) for j in range(len(ys) - 1)])
        return ys[-1] - (self._a * steps + self._b * beta_steps).sum(0)


def threshold_scale_cost(n: int, numel: int, thresholds: int, shifts: list, bits: int = FULL_BITS) -> Cost:
    """Cost of ThresholdScale on numel values and its truncate (by `shifts`)."""
    return sign_cost(n, thresholds * numel, bits, factor=numel) + truncate_cost(n, numel, min(shifts))


def relu(ctx, x: torch.Tensor, bits: int = FULL_BITS, resolution_bits: int = 0) -> torch.Tensor:
    """max(x, 0) exactly (coarse, resolution_bits k > 0: it may also give 0 for x in
    [0, (n - 1) 2^k)). Cost: sign_cost(n, numel, bits - k, factor=numel)."""
    negative_part, _ = select_negative(ctx, x, bits, resolution_bits=resolution_bits)
    return x - negative_part


def maximum(ctx, x: torch.Tensor, y: torch.Tensor, bits: int = FULL_BITS, resolution_bits: int = 0) -> torch.Tensor:
    """Elementwise max(x, y) = x - min(x - y, 0), valid for |x - y| < 2^bits - n 2^k.
    With resolution_bits k > 0 the comparison is coarse: the result is x or y exactly, and y
    only where y > x - (n - 1) 2^k, so it is at most (n - 1) 2^k below the maximum."""
    negative_part, _ = select_negative(ctx, x - y, bits, resolution_bits=resolution_bits)
    return x - negative_part


def max_along(ctx, x: torch.Tensor, dim: int = -1, bits: int = FULL_BITS, resolution_bits: int = 0) -> torch.Tensor:
    """max over `dim` (kept with size 1) by a tournament: ceil(log2(size)) maximum() levels.
    Coarse comparisons (resolution_bits k > 0) give one of the values, at most
    levels (n - 1) 2^k below the maximum."""
    x = x.movedim(dim, -1)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        top = maximum(ctx, x[..., :half], x[..., half:2 * half], bits, resolution_bits)
        x = torch.cat([top, x[..., 2 * half:]], -1)
    return x.movedim(-1, dim)


def max_along_cost(n: int, numel: int, size: int, bits: int = FULL_BITS, resolution_bits: int = 0) -> Cost:
    """numel: elements of x; size: length of the reduced dimension."""
    rows, total = numel // size, FREE
    while size > 1:
        total = total + sign_cost(n, rows * (size // 2), bits - resolution_bits, factor=rows * (size // 2))
        size = size // 2 + size % 2
    return total


def clamp(ctx, x: torch.Tensor, lo: float, hi: float, bits: int = FULL_BITS) -> torch.Tensor:
    """min(max(x, lo), hi) for public fixed-point bounds lo < hi, exactly, valid for
    |x - lo|, |x - hi| < 2^bits: hi + min(x - hi, 0) - min(x - lo, 0), both minima from one
    select_negative on the concatenation. Cost: clamp_cost (sign_cost of 2 numel, with their product)."""
    if not lo < hi:
        raise ValueError(f"clamp needs lo < hi, got {lo} and {hi}")
    lo_enc, hi_enc = (ctx.public(float(v)) for v in (lo, hi))
    negative, _ = select_negative(ctx, torch.stack([x - lo_enc, x - hi_enc]), bits)
    return hi_enc + negative[1] - negative[0]


def clamp_cost(n: int, numel: int, bits: int = FULL_BITS) -> Cost:
    return sign_cost(n, 2 * numel, bits, factor=2 * numel)
