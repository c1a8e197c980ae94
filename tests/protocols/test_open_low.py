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


def shifted_program(session, xs, bits, shifts, opening):
    from mpcft.protocols import sharing
    from mpcft.protocols.context import MPCContext
    ctx = MPCContext(session, opening=opening)
    shares = [sharing.share(ctx, x if ctx.rank == 0 else None, 0, x.shape) for x in xs]
    return sharing.open_low(ctx, list(zip(shares, bits)), shifts=shifts)


@pytest.mark.parametrize("n,opening", [(2, "all"), (3, "all"), (3, "king")])
def test_opened_low_bits_come_back_shifted(n, opening):
    prg = PRG(fresh_seed())
    bits, shifts = [5, 46, 64, 20], [3, 18, 0, 43]
    xs = [prg.ring((7, 11)) for _ in bits]
    for out in run_threads(shifted_program, n, xs, bits, shifts, opening, dealer_handler=CorrelationDealer):
        for x, b, s, got in zip(xs, bits, shifts, out):
            low = x if b == 64 else x & ((1 << b) - 1)
            assert got.shape == x.shape and torch.equal(got, low << s), (b, s)


def test_bits_out_of_range_and_shifts_not_matching_the_parts_are_refused():
    def bad(session):
        from mpcft.protocols import sharing
        from mpcft.protocols.context import MPCContext
        with pytest.raises(ValueError):
            sharing.open_low(MPCContext(session), [(torch.zeros(2, dtype=torch.int64), 65)])
        with pytest.raises(ValueError, match="2 shifts for 1 parts"):
            sharing.open_low(MPCContext(session), [(torch.zeros(2, dtype=torch.int64), 9)], shifts=[1, 2])
    run_threads(bad, 2, dealer_handler=CorrelationDealer)
