"""Opening through kings (MPCContext(opening="king")): the values of the all-to-all opening,
bit for bit, at the cost king_open_cost states, for open_, open_many, open_differences, open_low
and open_bits;
a whole protocol (GELU and its derivative) at its declared cost restated with with_opening."""
import functools
import math
import operator

import pytest
import torch

from mpcft.kernels import PRG, fresh_seed
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.cost import FREE, Cost, king_open_cost, open_cost
from mpcft.protocols.sharing import open_low_cost, open_to_cost
from mpcft.runtime import run_threads

from ..devices import to_cpu
from .programs import measured, owned

LOW_BITS = [1, 7, 8, 9, 15, 33, 63, 64]
DIFFERENCES = [0, 2, 3]     # open_differences opens x_k - 3 x_k for these k


def openings(session, xs, words, device=None):
    """Party 0's ring tensors xs, shared, and every party's XOR share words[rank], opened by
    every primitive in both modes: {(name, mode): (values, (rounds, bytes))}."""
    from mpcft.protocols import binary, sharing
    from mpcft.protocols.context import MPCContext
    ctx = MPCContext(session, device=device)
    king = MPCContext(session, correlations=ctx.correlations, device=device, opening="king")
    shares = [sharing.share(ctx, x if ctx.rank == 0 else None, 0, x.shape) for x in xs]
    out = {}
    for mode, c in (("all", ctx), ("king", king)):
        out["open", mode] = measured(session, lambda: [sharing.open_(c, shares[0])])
        out["open_one", mode] = measured(session, lambda: [sharing.open_(c, shares[1])])
        out["open_many", mode] = measured(session, lambda: sharing.open_many(c, shares))
        out["open_differences", mode] = measured(
            session, lambda: sharing.open_differences(c, [(shares[k], 3 * shares[k]) for k in DIFFERENCES]))
        out["open_low", mode] = measured(session, lambda: sharing.open_low(c, list(zip(shares, LOW_BITS))))
        out["open_bits", mode] = measured(session, lambda: [binary.open_bits(c, words[session.rank].to(c.device))])
    return out


@pytest.mark.parametrize("n", [3, 4, 5])
def test_king_openings_equal_all_to_all_at_the_king_cost(n, device):
    prg = PRG(fresh_seed())
    xs = [prg.ring((7, 11)), prg.ring((1,))] + [prg.ring((13 + i,)) for i in range(len(LOW_BITS) - 2)]
    xs[0][0, 0] = -1
    words = [prg.ring((3, 5)) for _ in range(n)]
    plain = {"open": [xs[0]], "open_one": [xs[1]], "open_many": xs, "open_differences": [-2 * xs[k] for k in DIFFERENCES],
             "open_low": [x if b == 64 else x & ((1 << b) - 1) for x, b in zip(xs, LOW_BITS)],
             "open_bits": [functools.reduce(operator.xor, words)]}
    sizes = {"open": xs[0].numel(), "open_one": 1, "open_many": sum(x.numel() for x in xs), "open_bits": 15,
             "open_differences": sum(xs[k].numel() for k in DIFFERENCES)}
    for out in to_cpu(run_threads(openings, n, xs, words, device, dealer_handler=CorrelationDealer)):
        for name, want in plain.items():
            for mode in ("all", "king"):
                values, _ = out[name, mode]
                assert all(torch.equal(v, w) for v, w in zip(values, want)) and len(values) == len(want), (name, mode)
        for name, numel in sizes.items():
            assert out[name, "all"][1] == astuple(open_cost(n, numel)), name
            assert out[name, "king"][1] == astuple(king_open_cost(n, numel)) == (2, 16 * (n - 1) * -(-numel // n))
        low = open_low_cost(n, [(x.numel(), b) for x, b in zip(xs, LOW_BITS)])
        chunks = sum(king_open_cost(n, x.numel(), b).bytes_sent for x, b in zip(xs, LOW_BITS))
        assert out["open_low", "all"][1] == astuple(low)
        assert out["open_low", "king"][1] == astuple(low.with_opening("king")) == (2, chunks)


def gelu_both_ways(session, x, device=None):
    """GELU and its derivative on party 0's x in each opening mode: decoded, with their costs."""
    from mpcft.protocols import activations, sharing
    from mpcft.protocols.context import MPCContext
    ctx = MPCContext(session, device=device)
    out = {}
    for mode in ("all", "king"):
        c = MPCContext(session, correlations=ctx.correlations, device=device, opening=mode)
        share = owned(c, x, 0).share
        result, cost = measured(session, lambda: activations.gelu(c, share, with_grad=True))
        out[mode] = [c.fp.decode(sharing.open_(c, t)) for t in result], cost
    return out


@pytest.mark.timeout(120)
def test_gelu_through_kings_costs_its_declared_cost_restated(device):
    from mpcft.protocols.activations import gelu_cost
    n, x = 4, torch.linspace(-20, 20, 1001, dtype=torch.float64)
    declared = gelu_cost(n, x.numel(), with_grad=True)
    king = declared.with_opening("king")
    assert king.rounds == 2 * declared.rounds and king.bytes_sent < declared.bytes_sent
    gelu = torch.nn.functional.gelu(x)
    dgelu = 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    for out in to_cpu(run_threads(gelu_both_ways, n, x, device, dealer_handler=CorrelationDealer, timeout=110)):
        assert out["all"][1] == astuple(declared) and out["king"][1] == astuple(king)
        for mode in ("all", "king"):
            (y, dy), _ = out[mode]
            assert (y - gelu).abs().max() < 2e-3 and (dy - dgelu).abs().max() < 5e-3, mode


def test_with_opening_restates_openings_only():
    assert open_cost(5, 11).with_opening("king") == king_open_cost(5, 11) == Cost(2, 2 * 4 * 3 * 8)
    assert open_cost(5, 11).with_opening("all") == open_cost(5, 11)
    gather = open_to_cost(3, 10, 1, 0)
    assert (gather + open_cost(3, 6)).with_opening("king") == Cost(1 + 2, 80 + 2 * 2 * 2 * 8)
    assert FREE.with_opening("king") == FREE
    with pytest.raises(ValueError, match="bare numbers"):
        (Cost(1, 16) + open_cost(3, 1)).with_opening("king")
    with pytest.raises(ValueError, match="opening must be one of"):
        open_cost(3, 1).with_opening("kings")


def test_unknown_opening_mode_is_refused():
    def bad(session):
        from mpcft.protocols.context import MPCContext
        with pytest.raises(ValueError, match="opening must be one of"):
            MPCContext(session, opening="tree")
    run_threads(bad, 2, dealer_handler=CorrelationDealer)


def astuple(cost: Cost):
    return (cost.rounds, cost.bytes_sent)
