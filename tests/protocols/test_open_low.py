"""open_low: x mod 2^bits from the low bits of each share, against the sum of the shares."""
import pytest
import torch

from mpcft.kernels import PRG, fresh_seed
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.sharing import open_low_cost
from mpcft.runtime import run_threads


def program(session, xs, bits):
    from mpcft.protocols import sharing
    from mpcft.protocols.context import MPCContext
    ctx = MPCContext(session)
    shares = [sharing.share(ctx, x if ctx.rank == 0 else None, 0, x.shape) for x in xs]
    before = session.comm.snapshot()
    out = sharing.open_low(ctx, list(zip(shares, bits)))
    delta = session.comm.snapshot() - before
    return out, (delta.rounds, delta.bytes_sent)


@pytest.mark.parametrize("n", [2, 3])
def test_low_bits_of_the_sum_in_one_round(n):
    prg = PRG(fresh_seed())
    bits = [1, 7, 8, 9, 15, 33, 63, 64]
    xs = [prg.ring((50, 3)) for _ in bits]
    xs[0][0, 0] = -1
    for out, cost in run_threads(program, n, xs, bits, dealer_handler=CorrelationDealer):
        for x, b, got in zip(xs, bits, out):
            expected = x if b == 64 else x & ((1 << b) - 1)
            assert got.shape == x.shape and torch.equal(got, expected), b
        declared = open_low_cost(n, [(x.numel(), b) for x, b in zip(xs, bits)])
        # each part's bits packed end to end in 64-bit words: 8 ceil(150 b / 64) bytes
        assert cost == (declared.rounds, declared.bytes_sent) == (1, sum(8 * -(-150 * b // 64) for b in bits) * (n - 1))


def test_bits_out_of_range_are_refused():
    def bad(session):
        from mpcft.protocols import sharing
        from mpcft.protocols.context import MPCContext
        with pytest.raises(ValueError):
            sharing.open_low(MPCContext(session), [(torch.zeros(2, dtype=torch.int64), 65)])
    run_threads(bad, 2, dealer_handler=CorrelationDealer)
