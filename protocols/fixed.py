"""Fixed-point arithmetic on shares: products with truncation, public constants, polynomials.

Shares encode x * 2^f. A product of two such values has 2f fractional bits and is brought
back with one truncation (stochastic rounding, error < 1.5 * 2^-f). Independent products are
batched so that a whole level costs one Beaver round and one truncation round; powers of a
value that comes out of a truncation need no Beaver round at all (truncation.FusedTruncations).
"""
import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS

from . import beaver
from .cost import FREE, Cost
from .truncation import FusedTruncations, truncate, truncate_cost, truncate_product, truncations_cost


def mul_public(ctx, x: torch.Tensor, value, extra_bits: int = 0) -> torch.Tensor:
    """x * c for public c (scalar or broadcastable tensor): local product, one truncation.

    extra_bits encodes c with f + extra_bits fractional bits (for constants such as 1/d
    whose rounding at 2^-f would show), valid while |x * c| < 2^(62 - 2f - extra_bits).
    """
    c = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    encoded = torch.round(c.to(torch.float64) * 2.0 ** (ctx.frac_bits + extra_bits)).to(torch.int64)
    encoded = encoded.to(x.device) if encoded.ndim else encoded
    return truncate(ctx, x * encoded, ctx.frac_bits + extra_bits)


MEAN_EXTRA_BITS = 10


def mean_last(ctx, x: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim (kept), 1/d encoded with MEAN_EXTRA_BITS = 10 extra bits:
    |mean| < 4096. Cost: mul_public_cost(n, rows, MEAN_EXTRA_BITS)."""
    return mean_of_sums(ctx, x.sum(-1, keepdim=True), x.shape[-1])


def mean_of_sums(ctx, sums: torch.Tensor, count: int) -> torch.Tensor:
    """sums / count, as mean_last divides (for sums formed, or truncated, by the caller)."""
    return mul_public(ctx, sums, 1.0 / count, extra_bits=MEAN_EXTRA_BITS)


def matmul(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y for shared x, y (batched as torch.matmul): one Beaver product, one truncation.
    Reveals nothing. Cost: matmul_cost(n, x.numel(), y.numel(), output numel)."""
    return truncate(ctx, beaver.matmul(ctx, x, y))


def mul(ctx, x, y, shift: int = 0) -> torch.Tensor:
    """x * y (shift: also divide by 2^shift in the same truncation)."""
    return mul_truncated(ctx, x, y, ctx.frac_bits + shift)


def mul_truncated(ctx, x, y, bits: int) -> torch.Tensor:
    """Shares of x y / 2^bits: a Beaver product, then a truncation (2 rounds); for x and y of
    one shape opened all-to-all, from one dealer correlation, the product share formed inside
    the truncation's masking pass (truncation.truncate_product). Reveals nothing. Cost:
    mul_cost(n, x.numel(), y.numel()) + truncate_cost(n, numel, bits)."""
    if ctx.opening == "all" and x.shape == y.shape:
        return truncate_product(ctx, x, y, bits)
    return truncate(ctx, beaver.mul(ctx, x, y), bits)


def square(ctx, x) -> torch.Tensor:
    return truncate(ctx, beaver.square(ctx, x))


def power_levels(degree: int) -> list:
    """The product schedule of x, x^2, ..., x^degree: per level (exponents truncated in that
    level's round, [(i, j) products giving x^(i+j)]); level L multiplies x^(2^L) by x^1, x^2, ...
    Degree 1: one level that truncates x."""
    levels, have, truncated = [], 1, set()
    while have < degree:
        pairs = [(have, k) for k in range(1, min(have, degree - have) + 1)]
        factors = sorted({e for pair in pairs for e in pair} - truncated)
        truncated |= set(factors)
        levels.append((factors, pairs))
        have += len(pairs)
    return levels or [([1], [])]


def powers(ctx, raw: torch.Tensor, bits: int, degree: int, extra=()) -> tuple:
    """x = raw / 2^bits and x^2, ..., x^degree in len(power_levels(degree)) rounds (1 if degree is 1).

    Level by level, the factors a level multiplies are truncated (one round), and their products
    are local (truncation.FusedTruncations): x^k for k >= 2 comes back untruncated, at 2f
    fractional bits. `extra`: (tensor, bits) truncations of raw's shape in the first round.
    Returns ([x (f bits), x^2, ..., x^degree (2f bits)], [the extra truncations]). Reveals
    only uniform openings. Cost: powers_cost(n, numel, degree, bits, [m for _, m in extra]).
    """
    levels = power_levels(degree)
    factors = [e for new, _ in levels for e in new]
    index = {e: k for k, e in enumerate(factors)}
    shifts = [bits if e == 1 else ctx.frac_bits for e in factors] + [m for _, m in extra]
    fused = FusedTruncations(ctx, raw.shape, shifts, [(index[i], index[j]) for _, level in levels for i, j in level])
    out = {}
    for level, (new, pairs) in enumerate(levels):
        parts = {index[e]: raw if e == 1 else out[e] for e in new}
        if level == 0:
            parts.update({len(factors) + k: x for k, (x, _) in enumerate(extra)})
        truncated = fused.truncate(parts)
        if level == 0:
            out[1], extra_out = truncated[0], truncated[1:]
        for i, j in pairs:
            out[i + j] = fused.product(index[i], index[j])
    return [out[k] for k in range(1, degree + 1)], extra_out


def combine_powers(ctx, terms, coeffs, constant: float = 0.0) -> tuple:
    """(acc, shift): constant + sum_k coeffs[k] x^(k+1) for powers' terms, untruncated at
    S = 2f + e fractional bits, e = 60 - 2f (coefficients rounded at 2^-e), and the shift
    S - f that truncation takes it back to f bits with. Valid while the result is below
    2^(62 - S) = 4 in absolute value; the terms themselves may wrap (ring sums are exact)."""
    f = ctx.frac_bits
    extra = combined_shift(f) - f
    if extra < 0:
        raise ValueError(f"combine_powers needs f <= 30 fractional bits, got {f}")
    acc = terms[0] * round(float(coeffs[0]) * 2.0 ** (f + extra))
    for term, c in zip(terms[1:], coeffs[1:]):
        acc.add_(term, alpha=round(float(c) * 2.0 ** extra))      # one pass, wrapping as * does
    return acc + ring_constant(ctx, constant, 2 * f + extra), combined_shift(f)


def ring_constant(ctx, value: float, frac_bits: int) -> int:
    """Party 0's share of a public constant with `frac_bits` fractional bits, as a Python int that
    broadcasts (any frac_bits below 62, where ctx.public stops at 40); 0 elsewhere."""
    return round(float(value) * 2.0 ** frac_bits) if ctx.rank == 0 else 0


def combine(ctx, terms, coeffs, constant=0.0, extra_bits: int = 0) -> torch.Tensor:
    """constant + sum_k coeffs[k] * terms[k] for public coefficients: one truncation.
    extra_bits: coefficients get f + extra_bits fractional bits, as in mul_public."""
    acc = truncate(ctx, *combination(ctx, terms, coeffs, extra_bits))
    return acc + ctx.public(constant) if constant else acc


def combination(ctx, terms, coeffs, extra_bits: int = 0) -> tuple:
    """(sum_k coeffs[k] * terms[k] untruncated, the shift f + extra_bits that truncates it back
    to the terms' scale): combine's sum, for callers that truncate several together."""
    scale = 2.0 ** (ctx.frac_bits + extra_bits)
    acc = terms[0] * round(float(coeffs[0]) * scale)
    for term, c in zip(terms[1:], coeffs[1:]):
        acc = acc.add(term, alpha=round(float(c) * scale))        # broadcasting terms: not in place
    return acc, ctx.frac_bits + extra_bits


def polynomial(ctx, raw: torch.Tensor, bits: int, coeffs) -> torch.Tensor:
    """sum_k coeffs[k] x^k for x = raw / 2^bits (coeffs[0] is the constant; |result| < 4):
    powers + one truncation. Cost: polynomial_cost(n, numel, len(coeffs) - 1, bits)."""
    terms, _ = powers(ctx, raw, bits, len(coeffs) - 1)
    return truncate(ctx, *combine_powers(ctx, terms, coeffs[1:], coeffs[0]))


# ----- declared costs (per party; n parties; sizes in elements) -------------------------------
def mul_cost(n: int, numel_x: int, numel_y: int, numel_out: int | None = None, shift: int = 0,
             frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return (beaver.mul_cost(n, numel_x, numel_y)
            + truncate_cost(n, numel_out or max(numel_x, numel_y), frac_bits + shift))


def mul_public_cost(n: int, numel: int, extra_bits: int = 0, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return truncate_cost(n, numel, frac_bits + extra_bits)


def matmul_cost(n: int, numel_x: int, numel_y: int, numel_out: int,
                frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return beaver.matmul_cost(n, numel_x, numel_y) + truncate_cost(n, numel_out, frac_bits)


def square_cost(n: int, numel: int, frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return beaver.square_cost(n, numel) + truncate_cost(n, numel, frac_bits)


def powers_cost(n: int, numel: int, degree: int, bits: int, extra=(),
                frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    """powers(raw, bits, degree, extra) with extra truncations by the shifts `extra`."""
    total = FREE
    for level, (new, _) in enumerate(power_levels(degree)):
        shifts = [bits if e == 1 else frac_bits for e in new] + (list(extra) if level == 0 else [])
        total = total + truncations_cost(n, [(numel, m) for m in shifts])
    return total


def combined_shift(frac_bits: int) -> int:
    """The shift combine_powers returns: its sums at 2f + (60 - 2f) fractional bits, back to f."""
    return 60 - frac_bits


def polynomial_cost(n: int, numel: int, degree: int, bits: int,
                    frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    return powers_cost(n, numel, degree, bits, (), frac_bits) + truncate_cost(n, numel, combined_shift(frac_bits))
