"""protocols.parallel: branches side by side give what they give one after the other (exact
openings and comparisons, truncations within their bound), in the largest branch's rounds with
the bytes summed (parallel_cost, also restated for king openings); a failing branch or peer
ends every branch with the error instead of hanging."""
import pytest
import torch

from mpcft.protocols import comparison, fixed, sharing
from mpcft.protocols.comparison import sign_cost
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.cost import open_cost
from mpcft.protocols.parallel import parallel, parallel_cost
from mpcft.protocols.truncation import truncate, truncate_cost
from mpcft.runtime import run_threads

from .programs import measured

SHAPE = (300,)


def branches(x, y):
    """Three independent protocols of different lengths: an opening (1 round), a sign bit
    (its comparison's rounds) and two truncations in turn (2 rounds)."""
    return [lambda c: sharing.open_(c, x),
            lambda c: comparison.sign_bit(c, y, bits=30),
            lambda c: truncate(c, truncate(c, x * 3) << 20)]


def declared(n, opening):
    costs = [open_cost(n, SHAPE[0]), sign_cost(n, SHAPE[0], 30),
             truncate_cost(n, SHAPE[0]) + truncate_cost(n, SHAPE[0])]
    return [c.with_opening(opening) for c in costs]


def side_by_side(session, x, y, opening):
    ctx = MPCContext(session, opening=opening)
    xs, ys = (sharing.share(ctx, v if ctx.rank == 0 else None, 0, SHAPE) for v in (x, y))
    together, cost = measured(session, lambda: parallel(ctx, *branches(xs, ys)))
    _, alone_cost = measured(session, lambda: [f(ctx) for f in branches(xs, ys)])
    return [together[0]] + [sharing.open_(ctx, t) for t in together[1:]], cost, alone_cost     # [0]: opened


@pytest.mark.parametrize("n, opening", [(2, "all"), (3, "all"), (3, "king")])
def test_branches_side_by_side_equal_one_after_the_other_in_fewer_rounds(n, opening):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-2 ** 40, 2 ** 40, SHAPE, generator=gen)
    y = torch.randint(-2 ** 29, 2 ** 29, SHAPE, generator=gen)
    for (opened, bit, twice), cost, alone_cost in run_threads(side_by_side, n, x, y, opening,
                                                              dealer_handler=CorrelationDealer):
        assert torch.equal(opened, x) and torch.equal(bit, (y < 0).long())
        assert ((twice - x * 3 / 2 ** 20).abs() < 3).all()        # two truncations: < 3/2 units each
        costs = declared(n, opening)
        assert alone_cost == (sum(c.rounds for c in costs), sum(c.bytes_sent for c in costs))
        merged = parallel_cost(*declared(n, "all")).with_opening(opening)
        assert cost == (merged.rounds, merged.bytes_sent) == (max(c.rounds for c in costs), alone_cost[1])


def failing(session, where):
    ctx = MPCContext(session)
    x = sharing.share(ctx, torch.ones(4, dtype=torch.int64) if ctx.rank == 0 else None, 0, (4,))

    def broken(c):
        fixed.mul_public(c, x, 0.5)
        if c.rank == 0 or where == "everywhere":
            raise ValueError("branch failed")
        return fixed.mul_public(c, x, 0.5)
    return parallel(ctx, lambda c: truncate(c, truncate(c, x) << 20), broken)


def test_a_failing_branch_raises_at_its_party_and_aborts_the_others():
    with pytest.raises(ValueError, match="branch failed"):
        run_threads(failing, 2, "everywhere", dealer_handler=CorrelationDealer, timeout=30)


def test_a_branch_failing_at_one_party_ends_the_run_instead_of_hanging():
    with pytest.raises(Exception) as info:
        run_threads(failing, 2, "party 0", dealer_handler=CorrelationDealer, timeout=30, step_timeout=5)
    assert "branch failed" in str(info.value) or "abort" in str(info.value).lower()


def test_a_branch_may_not_gather():
    def program(session):
        ctx = MPCContext(session)
        return parallel(ctx, lambda c: c.session.gather(torch.zeros(1), 0), lambda c: None)
    with pytest.raises(RuntimeError, match="exchanges only"):
        run_threads(program, 2, dealer_handler=CorrelationDealer, timeout=30)
