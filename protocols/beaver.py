"""Beaver multiplication over additive shares: elementwise, squares and (batched) matmul.

With a dealer triple (a, b, c = a*b), the parties open d = x - a and e = y - b in one
round (one message per peer holding both) and compute locally
  x*y = c + d*b + a*e + d*e        (d*e added by party 0 only).
d and e are uniform whatever x and y are, so nothing but the product's shares results.
Computed as c + d*(b + e) + a*e at party 0 and c + d*b + a*e elsewhere: two products per
party. The same holds with @ in place of * for matrix triples. Products here are exact ring
products; fixed-point callers truncate afterwards (see truncation.py).
"""
import torch

from mpcft.kernels import ring_matmul

from .cost import Cost, open_cost
from .sharing import open_, open_many


def mul(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Shares of x * y mod 2^64 (broadcasting). Cost: mul_cost(n, x.numel(), y.numel())."""
    correlation = ctx.correlation("triple", shape_a=list(x.shape), shape_b=list(y.shape))
    a, b = correlation.random
    d, e = open_many(ctx, [x - a, y - b])
    (c,) = correlation.derived()
    return c + d * (b + e if ctx.rank == 0 else b) + a * e


def mul_cost(n: int, numel_x: int, numel_y: int) -> Cost:
    return open_cost(n, numel_x + numel_y)


def square(ctx, x: torch.Tensor) -> torch.Tensor:
    """Shares of x^2 with a square pair (a, a^2): x^2 = a^2 + 2*d*a + d^2, d = x - a.

    Cost: square_cost(n, numel): half the bytes of mul(x, x).
    """
    correlation = ctx.correlation("square", shape=list(x.shape))
    (a,) = correlation.random
    d = open_(ctx, x - a)
    (aa,) = correlation.derived()
    z = aa + 2 * d * a
    if ctx.rank == 0:
        z += d * d
    return z


def square_cost(n: int, numel: int) -> Cost:
    return open_cost(n, numel)


def matmul(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Shares of x @ y mod 2^64 ([..., m, k] @ [..., k, n], batch dims broadcast).

    Cost: matmul_cost(n, x.numel(), y.numel()).
    """
    return matmuls(ctx, [(x, y)])[0]


def matmuls(ctx, pairs) -> list:
    """[x @ y for (x, y) in pairs], independent products opened together: one round, the
    bytes of the products' matmul_cost summed."""
    correlations = [ctx.correlation("matmul_triple", shape_a=list(x.shape), shape_b=list(y.shape))
                    for x, y in pairs]
    masked = [t for (x, y), c in zip(pairs, correlations) for t in (x - c.random[0], y - c.random[1])]
    opened = open_many(ctx, masked)
    out = []
    for i, correlation in enumerate(correlations):
        (a, b), d, e = correlation.random, opened[2 * i], opened[2 * i + 1]
        z = ring_matmul(d, b + e if ctx.rank == 0 else b) + ring_matmul(a, e)
        (c,) = correlation.derived()
        out.append(z + c)
    return out


def matmul_cost(n: int, numel_x: int, numel_y: int) -> Cost:
    return open_cost(n, numel_x + numel_y)

