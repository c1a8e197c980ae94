"""Probabilistic truncation that never fails catastrophically, for any number of parties.

truncate(x, m) returns shares of y = floor(x / 2^m) + b with b in {0, 1} and
P(b = 1) = (x mod 2^m) / 2^m: stochastic rounding, E[y] = x / 2^m exactly, error < 1 unit,
for every x with |x| < 2^62 (as a signed ring element); no wrap goes uncorrected.
(Escudero, Ghosh, Keller, Rachuri, Scholl, CRYPTO 2020; SPU semi2k TruncAPr.)

With dealer shares of r (uniform), r_top = msb(r) and r_mid = (r mod 2^63) >> m:
  open c = x + 2^62 + r; x' = x + 2^62 lies in [0, 2^63), and
  x' = c_low - r_low + u * 2^63 with u = c_top XOR r_top, so
  y = (c_low >> m) - r_mid + 2^(63-m) * u - 2^(62-m)     (up to the rounding bit b).
Reveals only c, which is uniform whatever x is.
"""
import torch

from mpcft.kernels.fused import trunc_reconstruct
from mpcft.kernels.ring import RING_BITS

from .cost import Cost, open_cost
from .sharing import open_, open_many

VALID_BITS = RING_BITS - 2  # inputs must satisfy |x| < 2^62


def truncate(ctx, x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """Shares of x / 2^bits with stochastic rounding (default: the context's fractional bits).

    Cost: truncate_cost(n, numel): 1 round, 8 * numel * (n-1) bytes per party.
    """
    bits = ctx.frac_bits if bits is None else int(bits)
    if not 0 < bits < VALID_BITS:
        raise ValueError(f"truncation by {bits} bits is outside (0, {VALID_BITS})")
    shape = tuple(x.shape)
    correlation = ctx.correlation("trunc", shape=list(shape), bits=bits)
    (r,) = correlation.random
    first = ctx.rank == 0
    c = open_(ctx, x + r + (1 << VALID_BITS) if first else x + r)
    r_top, r_mid = correlation.derived()
    return trunc_reconstruct(c, r_top, r_mid, bits, first)


def truncate_many(ctx, parts) -> list:
    """[truncate(x, bits) for (x, bits) in parts] with one opening: 1 round, same bytes."""
    for _, bits in parts:
        if not 0 < bits < VALID_BITS:
            raise ValueError(f"truncation by {bits} bits is outside (0, {VALID_BITS})")
    first = ctx.rank == 0
    correlations = [ctx.correlation("trunc", shape=list(x.shape), bits=bits) for x, bits in parts]
    masked = [x + c.random[0] + ((1 << VALID_BITS) if first else 0)
              for (x, _), c in zip(parts, correlations)]
    out = []
    for (x, bits), correlation, c in zip(parts, correlations, open_many(ctx, masked)):
        r_top, r_mid = correlation.derived()
        out.append(trunc_reconstruct(c, r_top, r_mid, bits, first))
    return out


def truncate_cost(n: int, numel: int) -> Cost:
    return open_cost(n, numel)
