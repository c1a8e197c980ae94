"""Large elementwise correlations are asked for in pieces within the dealer's bound on one
request: the protocols' results and costs are those of the whole request, and a dealer that
refuses the whole serves the pieces."""
import pytest
import torch

from mpcft.protocols.correlations import CorrelationDealer, join_pieces, split_layout

from .programs import measured, owned

LIMIT = 4096          # ring elements per request, far below what GELU on 1000 values asks for


def gelu_and_comparison(session, x, limit):
    from mpcft.protocols import activations, comparison, sharing
    from mpcft.protocols.context import MPCContext
    from mpcft.protocols.sources import DealerCorrelations
    ctx = MPCContext(session, correlations=DealerCorrelations(session, max_request_elements=limit))
    X = owned(ctx, x, 0)
    (y, dy), cost = measured(session, lambda: activations.gelu(ctx, X.share, with_grad=True))
    s = comparison.sign_bit(ctx, X.share, 32)
    return [ctx.fp.decode(sharing.open_(ctx, v)) for v in (y, dy)] + [sharing.open_(ctx, s)], cost


@pytest.mark.timeout(180)
@pytest.mark.parametrize("n", [2, 3])
def test_pieces_give_the_whole_requests_results_and_costs(n):
    from mpcft.runtime import run_threads
    x = torch.linspace(-6, 6, 1000, dtype=torch.float64).reshape(8, 125)    # 1000: not a multiple of 64
    pieces = run_threads(gelu_and_comparison, n, x, LIMIT, dealer_handler=CorrelationDealer(max_elements=LIMIT))
    whole = run_threads(gelu_and_comparison, n, x, 1 << 26, dealer_handler=CorrelationDealer)
    (y, dy, s), cost = pieces[0]
    reference = x.clone().requires_grad_()
    gelu = torch.nn.functional.gelu(reference)
    gelu.sum().backward()
    assert (y - gelu.detach()).abs().max() < 1e-3 and (dy - reference.grad).abs().max() < 2e-3
    assert torch.equal(s, (x < 0).long())
    assert all(result[1] == whole[0][1] for result in pieces)       # same rounds and bytes


def test_pieces_cut_at_word_boundaries_and_join_back():
    from mpcft.protocols.correlations import _elements, _spec, dealer_corrections, party_correlation
    params = {"shape": [10, 100], "bits": 14, "digit_bits": 4, "gates": [36, 20]}
    pieces = split_layout("sign_gates", params, LIMIT)
    assert pieces and all(_elements(_spec("sign_gates", p)) <= LIMIT for p in pieces)
    assert [p["shape"][0] % 64 for p in pieces[:-1]] == [0] * (len(pieces) - 1)
    assert sum(p["shape"][0] for p in pieces) == 1000
    assert split_layout("sign_gates", params, 1 << 20) is None and split_layout("dp_noise", {}, 1) is None
    seeds = [bytes(32), bytes(31) + b"\1"]
    parts = [party_correlation("sign_gates", p, 0, seeds[1], 1, 2, dealer_corrections("sign_gates", p, 0, seeds)[1])
             for p in pieces]
    joined = join_pieces("sign_gates", params, parts)
    shapes = [tuple(t.shape) for t in joined.random + joined.derived()]
    whole = party_correlation("sign_gates", params, 0, seeds[1], 1, 2,
                              dealer_corrections("sign_gates", params, 0, seeds)[1])
    assert shapes == [tuple(t.shape) for t in whole.random + whole.derived()]
    assert torch.equal(joined.random[0][0, :64], parts[0].random[0][:64])
