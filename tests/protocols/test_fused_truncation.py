"""FusedTruncations: truncations whose outputs multiply locally, against exact ring arithmetic.

Every opened truncation must be within 3/2 of x / 2^m (as truncate), and every product
must equal the product of the opened truncations mod 2^64 bit for bit, with 2, 3 and 5
parties, for shifts whose mask products vanish mod 2^64 and for shifts whose do not.
"""
import pytest
import torch

from mpcft.kernels import PRG, fresh_seed
from mpcft.protocols.correlations import CorrelationDealer, correction_bytes
from mpcft.protocols.truncation import input_bound, truncate_cost
from mpcft.runtime import run_threads

from . import programs


def _inputs(bits, numel):
    prg = PRG(fresh_seed())
    xs = [prg.below(2 * input_bound(m) - 1, numel) - (input_bound(m) - 1) for m in bits]
    xs[0][:4] = torch.tensor([input_bound(bits[0]) - 1, 1 - input_bound(bits[0]), 0, -1])
    return xs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("bits", [[20, 20, 6], [40, 30, 1], [61, 2, 33]])
def test_products_of_truncations_are_exact_ring_products(n, bits):
    pairs = [(0, 0), (0, 1), (1, 2), (2, 2), (0, 2)]
    xs = _inputs(bits, 20_000)
    ys, prods, cost = run_threads(programs.fused_truncations, n, xs, bits, pairs,
                                  dealer_handler=CorrelationDealer)[0]
    for x, y, m in zip(xs, ys, bits):
        assert ((y << m) - x).abs().max() < 3 * 2 ** (m - 1)         # |y - x / 2^m| < 3/2
    for (i, j), product in zip(pairs, prods):
        assert torch.equal(product, ys[i] * ys[j]), (i, j)     # int64 products wrap mod 2^64
    # one round per truncation, truncate's bytes; the products cost nothing
    declared = [truncate_cost(n, x.numel(), m) for x, m in zip(xs, bits)]
    assert cost == (sum(c.rounds for c in declared), sum(c.bytes_sent for c in declared))


def test_dealer_sends_what_the_layout_declares():
    # per truncation r_top and r_mid; per pair 2 (i == j), 3, or 4 when m_i + m_j > 62. r_mid
    # and r_mid products in 8 bytes; a value read times 2^(63 - m) (r_top, a product with
    # r_top) in ceil((m + 1) / 8), r_top_i r_top_j (times 2^(126 - m_i - m_j)) in
    # ceil((m_i + m_j - 62) / 8)
    params = {"shape": [10], "bits": [20, 20, 50], "pairs": [[0, 0], [0, 1], [1, 2]]}
    masks = (3 + 8) + (3 + 8) + (7 + 8)
    products = (8 + 3) + (8 + 3 + 3) + (8 + 7 + 3 + 1)
    assert correction_bytes("trunc_products", params) == 10 * (masks + products)


@pytest.mark.parametrize("params", [
    {"shape": [2], "bits": [], "pairs": []},
    {"shape": [2], "bits": [0], "pairs": []},
    {"shape": [2], "bits": [62], "pairs": []},
    {"shape": [2], "bits": [True], "pairs": []},
    {"shape": [2], "bits": [20, 20], "pairs": [[1, 0]]},
    {"shape": [2], "bits": [20, 20], "pairs": [[0, 2]]},
    {"shape": [2], "bits": [20, 20], "pairs": [[0, 1], [0, 1]]},
    {"shape": [2], "bits": [20], "pairs": [[0]]},
    {"shape": [2], "bits": 20, "pairs": []},
])
def test_bad_layouts_are_refused(params):
    with pytest.raises(ValueError):
        correction_bytes("trunc_products", params)


def test_products_need_a_declared_pair_of_truncated_values():
    def program(session):
        from mpcft.protocols.context import MPCContext
        from mpcft.protocols.truncation import FusedTruncations
        ctx = MPCContext(session)
        fused = FusedTruncations(ctx, (3,), [20, 20], [(0, 1)])
        x = ctx.public(1.0, (3,))
        fused.truncate({0: x})
        errors = []
        for call in (lambda: fused.product(0, 1), lambda: fused.product(0, 0), lambda: fused.truncate({0: x})):
            try:
                call()
            except ValueError as exc:
                errors.append(str(exc))
        return errors
    for errors in run_threads(program, 2, dealer_handler=CorrelationDealer):
        assert len(errors) == 3
