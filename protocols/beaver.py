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
from mpcft.kernels.fused import beaver_product, beaver_product_of_shares

from .cost import Cost, open_cost
from .sharing import exchange_differences, open_, open_differences


def mul(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Shares of x * y mod 2^64 (broadcasting). Cost: mul_cost(n, x.numel(), y.numel())."""
    correlation = ctx.correlation("triple", shape_a=list(x.shape), shape_b=list(y.shape))
    a, b = correlation.random
    if ctx.opening == "all":      # d and e added up inside the product
        own, others = exchange_differences(ctx, [(x, a), (y, b)])
        (c,) = correlation.derived()
        return beaver_product_of_shares(c, own, others, a, b, ctx.rank == 0)
    d, e = open_differences(ctx, [(x, a), (y, b)])
    (c,) = correlation.derived()
    return beaver_product(c, d, e, a, b, ctx.rank == 0)


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


class MaskedFactor:
    """Beaver products of one x with several factors y_k (each of the shape listed for it,
    broadcasting to x's) and, optionally, its square, with x opened masked once. The dealer's
    a (uniform), b_k, a^2 and a b_k ("factor_products"): the first use opens d = x - a beside
    its e_k = y_k - b_k, later uses only their e_k (a square after the first use: nothing):
      x y_k = d e_k + d b_k + a e_k + a b_k,    x^2 = d^2 + 2 d a + a^2    (d e_k, d^2 at party 0).
    Uses come in the listed order, the square any time. Reveals nothing: d and the e_k are
    uniform. Cost: masked_factor_cost(n, x.numel(), [each use's factor numel, 0 for the square]).

        factor = MaskedFactor(ctx, x, [y.shape, z.shape])
        xy = factor.times(y)          # opens x - a and y - b_1
        xz = factor.times(z)          # opens z - b_2 only
    """

    def __init__(self, ctx, x: torch.Tensor, factors: list, square: bool = False):
        self.ctx, self._x, self._factors = ctx, x, [tuple(f) for f in factors]
        self._correlation = ctx.correlation("factor_products", shape=list(x.shape),
                                            factors=[list(f) for f in self._factors], square=int(square))
        self._d, self._used = None, 0
        self._square_pending, self._squares = bool(square), int(square)     # a^2 first among the derived

    def _open(self, others: list) -> list:
        """Opens x - a on the first use, beside the differences y - b of `others` ((y, b)
        pairs); returns the others opened."""
        first_use = self._d is None
        mine = [(self._x, self._correlation.random[0])] if first_use else []
        opened = open_differences(self.ctx, mine + others)
        if first_use:
            self._d, self._x = opened[0], None
            return opened[1:]
        return opened

    def square(self) -> torch.Tensor:
        """Shares of x^2 (exact ring product); once."""
        if not self._square_pending:
            raise ValueError("this MaskedFactor has no square: ask for it with square=True")
        self._square_pending = False
        if self._d is None:
            self._open([])
        a, d = self._correlation.random[0], self._d
        z = self._correlation.derived()[0] + 2 * d * a
        return z + d * d if self.ctx.rank == 0 else z

    def times(self, y: torch.Tensor) -> torch.Tensor:
        """Shares of x * y for the next listed factor (exact ring product)."""
        k = self._used
        if k == len(self._factors) or tuple(y.shape) != self._factors[k]:
            raise ValueError(f"MaskedFactor expected its factors of shapes {self._factors} in order; use {k + 1} "
                             f"got {tuple(y.shape)}")
        self._used += 1
        a, b = self._correlation.random[0], self._correlation.random[1 + k]
        (e,) = self._open([(y, b)])
        ab = self._correlation.derived()[self._squares + k]
        return beaver_product(ab, self._d, e, a, b, self.ctx.rank == 0)


def masked_factor_cost(n: int, numel: int, uses: list) -> Cost:
    """MaskedFactor of numel values used in order for factors of uses[k] values (0: the
    square): x - a is opened with the first use, then each factor's e_k."""
    total = open_cost(n, numel + uses[0])
    for used in uses[1:]:
        if used:
            total = total + open_cost(n, used)
    return total


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
    opened = open_differences(ctx, [t for (x, y), c in zip(pairs, correlations)
                                    for t in ((x, c.random[0]), (y, c.random[1]))])
    return [_from_masked(ctx, opened[2 * i], opened[2 * i + 1], *correlation.random,
                         lambda correlation=correlation: correlation.derived()[0])
            for i, correlation in enumerate(correlations)]


def _from_masked(ctx, d, e, a, b, dealer_c) -> torch.Tensor:
    """Shares of x @ y from the opened d = x - A, e = y - B and the triple (A, B, C = A @ B).
    C (dealer_c()) is asked for after both local products, which the dealer's A @ B overlaps."""
    z = ring_matmul(d, b + e if ctx.rank == 0 else b)
    z += ring_matmul(a, e)
    return z.add_(dealer_c())


def matmul_cost(n: int, numel_x: int, numel_y: int) -> Cost:
    return open_cost(n, numel_x + numel_y)


class MatmulWithGrads:
    """z = x @ y ([..., m, k] @ [..., k, n], the same batch dimensions) by a Beaver product
    whose masks its backward reuses. With E = x - A, F = y - B opened for z, and the dealer's
    uniform C of z's shape with C B^T and A^T C ("matmul_grads"), the gradients of an
    incoming G open only H = G - C:
      G y^T = H (F + B)^T + C F^T + C B^T,     x^T G = (E + A)^T H + E^T C + A^T C
    (the public H F^T and E^T H added by party 0 only). So a backward costs one opening of G,
    where two Beaver products would open G twice, x and y. Reveals nothing: E, F and H are
    uniform. Cost: matmul_cost(n, x.numel(), y.numel()), then backward_cost(n, z.numel()).

        product = MatmulWithGrads(ctx, x, y, grad_x=True, grad_y=True)   # product.out: x @ y
        gx, gy = product.backward(g)                                     # g y^T, x^T g; once
    """

    def __init__(self, ctx, x: torch.Tensor, y: torch.Tensor, grad_x: bool, grad_y: bool):
        self.ctx, self.grad_x, self.grad_y = ctx, bool(grad_x), bool(grad_y)
        self._correlation = ctx.correlation("matmul_grads", shape_a=list(x.shape), shape_b=list(y.shape),
                                            grad_a=int(self.grad_x), grad_b=int(self.grad_y))
        a, b, _ = self._correlation.random
        self._e, self._f = open_differences(ctx, [(x, a), (y, b)])
        self.out = _from_masked(ctx, self._e, self._f, a, b, lambda: self._correlation.derived()[0])
        self._done = False

    def backward(self, grad: torch.Tensor) -> tuple:
        """(grad y^T if grad_x else None, x^T grad if grad_y else None), exact ring products."""
        if self._done:
            raise RuntimeError("MatmulWithGrads.backward runs once: its masks are used up")
        self._done = True
        ctx, first = self.ctx, self.ctx.rank == 0
        a, b, c = self._correlation.random
        (h,) = open_differences(ctx, [(grad, c)])
        derived = iter(self._correlation.derived()[1:])
        gx = gy = None
        if self.grad_x:
            f_t = self._f.mT.contiguous()
            gx = ring_matmul(h, (b.mT + f_t if first else b.mT).contiguous()) + ring_matmul(c, f_t) + next(derived)
        if self.grad_y:
            e_t = self._e.mT.contiguous()
            gy = ring_matmul((a.mT + e_t if first else a.mT).contiguous(), h) + ring_matmul(e_t, c) + next(derived)
        return gx, gy

    @staticmethod
    def backward_cost(n: int, numel_out: int) -> Cost:
        return open_cost(n, numel_out)

