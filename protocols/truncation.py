"""Probabilistic truncation that never fails catastrophically, for any number of parties.

truncate(x, m) returns shares of y, x / 2^m rounded stochastically: |y - x / 2^m| < 3/2 and
E[y] = x / 2^m - e, 0 <= e < 2^-(m + 1) units; where 2^m <= n + 1 (no bits left out of the
opening, below), y is floor(x / 2^m) or + 1 and E[y] = x / 2^m exactly. For every x
with |x| < 2^62 - 2^(m - 1) (as a signed ring element); no wrap goes uncorrected.
(Escudero, Ghosh, Keller, Rachuri, Scholl, CRYPTO 2020; SPU semi2k TruncAPr.)

With dealer shares of r (uniform), r_top = msb(r) and r_mid = (r mod 2^63) >> m:
  open c = x + 2^62 + r; x' = x + 2^62 lies in [0, 2^63), and
  x' = c_low - r_low + u * 2^63 with u = c_top XOR r_top, so
  y = (c_low >> m) - r_mid + 2^(63-m) * u - 2^(62-m) = floor(x / 2^m) + b,
b in {0, 1}, P(b = 1) = (x mod 2^m) / 2^m. Reveals only c, which is uniform whatever x is.

The opening leaves out low bits (open_masked): each party sends floor(c_i / 2^k) mod 2^(64 - k)
of its share c_i (party 0 first adds O = floor((n - 1)(2^k - 1) / 2)), 64 - k bits packed end
to end (46 for m = 20 and 2 or 3 parties), k = dropped_bits(n, m) the largest with
(n + 1) 2^k <= 2^m. The sum,
times 2^k, is x - D + 2^62 + r with D = sum_i rho_i - O, rho_i = (c_i (+ O)) mod 2^k: exactly
the protocol above on x - D, |D| <= 2^(m - 1). The rounding bit now comes from r's bits k..m-1
only, so E[y] = (x - D + (r mod 2^k)) / 2^m, and O makes E[D] = E[r mod 2^k] up to 1/2:
|y - x / 2^m| < 1 + |D| / 2^m <= 3/2 and E[y] = x / 2^m - e, 0 <= e < 2^-(m + 1), for
|x| < 2^62 - 2^(m - 1). Each message is a function of c_i, which the full opening sent:
nothing more is revealed.
"""
import math

import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS
from mpcft.kernels.fused import masked_high, product_masked_high, trunc_reconstruct, truncated_product
from mpcft.kernels.ring import RING_BITS

from .correlations import correction_bytes, cross_terms
from .cost import Cost
from .sharing import exchange_differences, open_low, open_low_cost

VALID_BITS = RING_BITS - 2  # inputs must satisfy |x| < 2^62 - 2^(m - 1) (input_bound)


def input_bound(bits: int) -> int:
    """Truncation by `bits` is exact (module docstring) for |x| < 2^62 - 2^(bits - 1)."""
    return (1 << VALID_BITS) - (1 << (int(bits) - 1))


def truncate(ctx, x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """Shares of x / 2^bits with stochastic rounding (default: the context's fractional bits).

    Cost: truncate_cost(n, numel, bits): 1 round, 8 ceil((64 - dropped_bits(n, bits)) numel / 64)
    (n-1) bytes per party (packed in 64-bit words).
    """
    bits = ctx.frac_bits if bits is None else int(bits)
    if not 0 < bits < VALID_BITS:
        raise ValueError(f"truncation by {bits} bits is outside (0, {VALID_BITS})")
    shape = tuple(x.shape)
    correlation = ctx.correlation("trunc", shape=list(shape), bits=bits)
    (r,) = correlation.random
    first = ctx.rank == 0
    (c,) = open_masked(ctx, [(x, r, bits)])
    r_top, r_mid = correlation.derived()
    return trunc_reconstruct(c, r_top, r_mid, bits, first)


def truncate_product(ctx, x: torch.Tensor, y: torch.Tensor, bits: int) -> torch.Tensor:
    """truncate(ctx, beaver.mul(ctx, x, y), bits) for x and y of one shape, opened all-to-all,
    from one correlation, "product_trunc": the triple with the truncation's mask r folded into c
    (c + r), so that nobody draws r, and the product share formed inside the masking pass, never
    written out. Reveals d, e and the uniform masked product. Cost: mul_cost(n, numel, numel)
    + truncate_cost(n, numel, bits), the dealer's bytes those of a triple and a truncation."""
    if not 0 < bits < VALID_BITS:
        raise ValueError(f"truncation by {bits} bits is outside (0, {VALID_BITS})")
    if x.shape != y.shape or ctx.opening != "all":
        raise ValueError(f"truncate_product takes two shares of one shape opened all-to-all, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)} with opening {ctx.opening!r}")
    correlation = ctx.correlation("product_trunc", shape=list(x.shape), bits=bits)
    a, b = correlation.random
    own, others = exchange_differences(ctx, [(x, a), (y, b)])
    masked_product, r_top, r_mid = correlation.derived()
    first = ctx.rank == 0

    def form(offset, k):          # the masked product's share, never written out
        return product_masked_high(masked_product, own, others, a, b, first, None, offset, k)
    (c,) = _open_high(ctx, [(form, bits)])
    return trunc_reconstruct(c, r_top, r_mid, bits, first)


def truncate_many(ctx, parts) -> list:
    """[truncate(x, bits) for (x, bits) in parts] with one opening: 1 round, same bytes."""
    for _, bits in parts:
        if not 0 < bits < VALID_BITS:
            raise ValueError(f"truncation by {bits} bits is outside (0, {VALID_BITS})")
    first = ctx.rank == 0
    correlations = [ctx.correlation("trunc", shape=list(x.shape), bits=bits) for x, bits in parts]
    masked = [(x, c.random[0], bits) for (x, bits), c in zip(parts, correlations)]
    out = []
    for (x, bits), correlation, c in zip(parts, correlations, open_masked(ctx, masked)):
        r_top, r_mid = correlation.derived()
        out.append(trunc_reconstruct(c, r_top, r_mid, bits, first))
    return out


def dropped_bits(n: int, bits: int) -> int:
    """k: the low bits of its share of c that each party leaves out of a truncation by `bits`,
    the largest with (n + 1) 2^k <= 2^bits (module docstring)."""
    return max(0, int(bits) - math.ceil(math.log2(n + 1)))


def open_masked(ctx, parts) -> list:
    """For [(share of x, share of r, m), ...], the truncations' masked values c = x + r + 2^62
    opened in one round as c - D (module docstring): each party sends the top 64 - k bits of its
    share. Reveals no more than c. Cost: truncations_cost(n, [(numel, m), ...])."""
    return _open_high(ctx, [(lambda offset, k, x=x, r=r: masked_high(x, r, offset, k), m) for x, r, m in parts])


def _open_high(ctx, parts) -> list:
    """open_masked of [(form, m)]: form(offset, k) returns a party's masked share plus offset,
    shifted right by k, and its packed message (as kernels.fused.masked_high does)."""
    n, first = ctx.world_size, ctx.rank == 0
    dropped = [dropped_bits(n, m) for _, m in parts]
    high, packed = zip(*(form((1 << VALID_BITS) + (n - 1) * ((1 << k) - 1) // 2 if first else 0, k)
                         for (form, _), k in zip(parts, dropped)))
    return open_low(ctx, [(h, RING_BITS - k) for h, k in zip(high, dropped)], shifts=dropped, packed=packed)


def truncations_cost(n: int, parts) -> Cost:
    """Truncations opened together (open_masked), parts: (numel, bits) each."""
    return open_low_cost(n, [(numel, RING_BITS - dropped_bits(n, bits)) for numel, bits in parts])


def truncate_cost(n: int, numel: int, bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return truncations_cost(n, [(numel, bits)])


def truncate_dealer_bytes(numel: int, bits: int) -> int:
    """Dealer bytes (to all parties together) of truncating numel values by `bits`: r_mid in
    8 bytes, r_top in ceil((bits + 1) / 8) (correlations: it is read times 2^(63 - bits))."""
    return correction_bytes("trunc", {"shape": [numel], "bits": bits})


class FusedTruncations:
    """Truncations whose outputs multiply locally: one dealer correlation for a fixed schedule.

    truncate gives y = P + M: P = (c_low >> m) + t c_top - 2^(62-m) is public once c is open,
    M = -r_mid + t s r_top (t = 2^(63-m), s = 1 - 2 c_top, public) is linear in the dealer's
    r_mid and r_top. So y_i y_j = P_i P_j + P_i M_j + P_j M_i + M_i M_j is local, given shares
    of r_mid_i r_mid_j, r_mid_i r_top_j, r_top_i r_mid_j and r_top_i r_top_j ("trunc_products"):
    a product of two truncated values needs no Beaver opening. Reveals only each uniform c,
    as truncate does. Cost: truncate_cost(n, numel, m) per truncation by m; products are free.

        fused = FusedTruncations(ctx, shape, bits=[6, 20], pairs=[(0, 0), (0, 1)])
        (u,) = fused.truncate({0: x})        # one round: u = x / 2^6
        uu = fused.product(0, 0)             # u * u exactly (2f fractional bits), no round
    """

    def __init__(self, ctx, shape, bits: list, pairs: list):
        self.ctx, self.bits = ctx, [int(m) for m in bits]
        self.pairs = [(min(i, j), max(i, j)) for i, j in pairs]
        self.correlation = ctx.correlation("trunc_products", shape=list(shape), bits=self.bits,
                                           pairs=[list(pair) for pair in self.pairs])
        self._opened = {}     # index -> (opened c, output share)
        offset, self._offsets = 2 * len(self.bits), {}   # where each pair's mask products start
        for i, j in self.pairs:
            self._offsets[(i, j)] = offset
            offset += cross_terms(self.bits[i], self.bits[j], i == j)

    def truncate(self, parts: dict) -> list:
        """Shares of x / 2^bits[i] for every {i: x} (each index once), opened together: one round."""
        if any(i in self._opened or not 0 <= i < len(self.bits) for i in parts):
            raise ValueError(f"truncations {sorted(parts)}: each index of {len(self.bits)} is truncated once")
        ctx, first = self.ctx, self.ctx.rank == 0
        masks = self.correlation.random
        opened = open_masked(ctx, [(x, masks[i], self.bits[i]) for i, x in parts.items()])
        derived = self.correlation.derived()
        out = []
        for i, c in zip(parts, opened):
            out.append(trunc_reconstruct(c, derived[2 * i], derived[2 * i + 1], self.bits[i], first))
            self._opened[i] = (c, out[-1])
        return out

    def product(self, i: int, j: int) -> torch.Tensor:
        """Shares of y_i * y_j mod 2^64 (fractional bits add up), for a declared pair."""
        (i, j) = (min(i, j), max(i, j))
        if (i, j) not in self._offsets or i not in self._opened or j not in self._opened:
            raise ValueError(f"product ({i}, {j}) is not a declared pair of two truncated values")
        derived = self.correlation.derived()
        offset = self._offsets[(i, j)]
        if i == j:      # r_mid^2, r_mid r_top; r_top r_mid is the same and r_top^2 = r_top
            mid_mid, mid_top = derived[offset:offset + 2]
            terms = [mid_mid, mid_top, mid_top, derived[2 * i]]
        else:           # the fourth only where t_i t_j does not vanish mod 2^64
            terms = derived[offset:offset + cross_terms(self.bits[i], self.bits[j], False)]
            terms = terms + terms[:1] * (4 - len(terms))
        (c_i, y_i), (c_j, y_j) = self._opened[i], self._opened[j]
        return truncated_product(c_i, c_j, y_i, y_j, terms, self.bits[i], self.bits[j], self.ctx.rank == 0)
