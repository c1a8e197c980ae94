"""Fixed-point arithmetic on shares: products with truncation, public constants, polynomials.

Shares encode x * 2^f. A product of two such values has 2f fractional bits and is brought
back with one truncation (stochastic rounding, error < 2^-f). Independent products are
batched so that a whole level costs one Beaver round and one truncation round.
"""
import torch

from . import beaver
from .correlations import power_levels
from .cost import FREE, Cost, open_cost
from .sharing import open_many
from .truncation import truncate, truncate_cost, truncate_many


def mul_public(ctx, x: torch.Tensor, value, extra_bits: int = 0) -> torch.Tensor:
    """x * c for public c (scalar or broadcastable tensor): local product, one truncation.

    extra_bits encodes c with f + extra_bits fractional bits (for constants such as 1/d
    whose rounding at 2^-f would show), valid while |x * c| < 2^(62 - 2f - extra_bits).
    """
    c = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    encoded = torch.round(c.to(torch.float64) * 2.0 ** (ctx.frac_bits + extra_bits)).to(torch.int64)
    encoded = encoded.to(x.device) if encoded.ndim else encoded
    return truncate(ctx, x * encoded, ctx.frac_bits + extra_bits)


def mean_last(ctx, x: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim (kept), 1/d encoded with 10 extra bits: |mean| < 4096."""
    return mul_public(ctx, x.sum(-1, keepdim=True), 1.0 / x.shape[-1], extra_bits=10)


def matmul(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y for shared x, y (batched as torch.matmul): one Beaver product, one truncation.
    Reveals nothing. Cost: matmul_cost(n, x.numel(), y.numel(), output numel)."""
    return truncate(ctx, beaver.matmul(ctx, x, y))


def mul(ctx, x, y, shift: int = 0) -> torch.Tensor:
    """x * y (shift: also divide by 2^shift in the same truncation)."""
    return truncate(ctx, beaver.mul(ctx, x, y), ctx.frac_bits + shift)


def square(ctx, x) -> torch.Tensor:
    return truncate(ctx, beaver.square(ctx, x))


def powers(ctx, x: torch.Tensor, degree: int) -> list:
    """[x, x^2, ..., x^degree] in ceil(log2(degree)) levels of 2 rounds, each power opened once.

    Every power x^k that is a factor is opened masked, e_k = x^k - a_k, once, in the level
    where it is first used; then x^i x^j = e_i e_j + e_i a_j + e_j a_i + a_i a_j is local,
    with the dealer's shares of a_i a_j ("powers" correlation), and one truncation round per
    level. Every opened e_k has its own uniform mask, so only the output shares result.
    A degree-8 evaluation opens 4 factors instead of 13 with separate Beaver products.
    """
    levels = power_levels(degree)
    if not levels:
        return [x]
    correlation = ctx.correlation("powers", shape=list(x.shape), degree=degree)
    factors = sorted({f for new, _ in levels for f in new})
    masks = dict(zip(factors, correlation.random))
    pair_number = {pair: i for i, pair in enumerate(p for _, level in levels for p in level)}
    out, opened, cross = {1: x}, {}, None
    for new, pairs in levels:
        opened.update(zip(new, open_many(ctx, [out[k] - masks[k] for k in new])))
        cross = cross if cross is not None else correlation.derived()
        products = []
        for i, j in pairs:
            product = opened[i] * masks[j] + opened[j] * masks[i] + cross[pair_number[(i, j)]]
            products.append(product + opened[i] * opened[j] if ctx.rank == 0 else product)
        for (i, j), value in zip(pairs, truncate_many(ctx, [(p, ctx.frac_bits) for p in products])):
            out[i + j] = value
    return [out[k] for k in range(1, degree + 1)]


def combine(ctx, terms, coeffs, constant=0.0, extra_bits: int = 0) -> torch.Tensor:
    """constant + sum_k coeffs[k] * terms[k] for public coefficients: one truncation.
    extra_bits: coefficients get f + extra_bits fractional bits, as in mul_public."""
    acc, scale = None, 2.0 ** (ctx.frac_bits + extra_bits)
    for term, c in zip(terms, coeffs):
        product = term * round(float(c) * scale)
        acc = product if acc is None else acc + product
    acc = truncate(ctx, acc, ctx.frac_bits + extra_bits)
    return acc + ctx.public(constant) if constant else acc


def polynomial(ctx, x: torch.Tensor, coeffs) -> torch.Tensor:
    """sum_k coeffs[k] x^k (coeffs[0] is the constant): powers + one truncation."""
    return combine(ctx, powers(ctx, x, len(coeffs) - 1), coeffs[1:], coeffs[0])


# ----- declared costs (per party; n parties; sizes in elements) -------------------------------
def mul_cost(n: int, numel_x: int, numel_y: int, numel_out: int | None = None) -> Cost:
    return beaver.mul_cost(n, numel_x, numel_y) + truncate_cost(n, numel_out or max(numel_x, numel_y))


def matmul_cost(n: int, numel_x: int, numel_y: int, numel_out: int) -> Cost:
    return beaver.matmul_cost(n, numel_x, numel_y) + truncate_cost(n, numel_out)


def square_cost(n: int, numel: int) -> Cost:
    return beaver.square_cost(n, numel) + truncate_cost(n, numel)


def powers_cost(n: int, numel: int, degree: int) -> Cost:
    total = FREE
    for new, pairs in power_levels(degree):
        total = total + open_cost(n, len(new) * numel) + truncate_cost(n, len(pairs) * numel)
    return total


def polynomial_cost(n: int, numel: int, degree: int) -> Cost:
    return powers_cost(n, numel, degree) + truncate_cost(n, numel)
