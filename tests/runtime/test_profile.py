"""Time accounting of CommStats: region seconds nest, waits for peers, the dealer and PRG expansion."""
import time

import pytest
import torch

from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import CommStats, run_threads
from mpcft.runtime.comm import TIME_FIELDS
from mpcft.tensor import SharedTensor

pytestmark = pytest.mark.timeout(30)


def test_region_seconds_nest_and_blocked_time_counts_in_every_active_region():
    comm = CommStats()
    with comm.region("step"):
        for _ in range(2):
            with comm.region("a"):
                time.sleep(0.01)
        with comm.region("b"):
            comm.count_sent(8, 40, seconds=0.002)
            comm.count_received(8, 40, wait_seconds=0.003)
            comm.count_dealer_wait(0.004)
            comm.count_prg(0.005)
            time.sleep(0.02)
        before = comm.snapshot()
    snap = comm.snapshot()
    step, a, b = snap.region("step"), snap.region("step/a"), snap.region("step/b")
    assert (step.calls, a.calls, b.calls) == (1, 2, 1)
    assert a.seconds >= 0.02 and b.seconds >= 0.02 and step.seconds >= a.seconds + b.seconds
    assert snap.total.seconds == step.seconds and snap.total.calls == 1   # outermost regions only
    for counts in (step, b, snap.total):
        assert (counts.send_seconds, counts.wait_seconds, counts.dealer_wait_seconds,
                counts.prg_seconds) == (0.002, 0.003, 0.004, 0.005)
    assert a.wait_seconds == 0 and b.compute_seconds == pytest.approx(b.seconds - 0.014)
    assert all(getattr(c, f) >= 0 for c in snap.regions.values() for f in TIME_FIELDS)
    assert before.region("step").seconds == 0     # a region's time is added when it exits
    diff = snap - before
    assert diff.region("step").seconds == step.seconds and diff.region("step/b").seconds == 0
    assert (snap.total + snap.total).seconds == 2 * snap.total.seconds
    assert " s " in comm.table() and "step/b" in comm.table()


def delayed_exchanges(session, delay):
    """Two exchanges of one element; the last rank sends the first one `delay` s late."""
    for name, late in (("late", delay), ("prompt", 0.0)):
        with session.comm.region(name):
            if session.rank == session.world_size - 1:
                time.sleep(late)
            session.exchange({p: torch.zeros(1, dtype=torch.int64) for p in session.peers})
    return session.comm.snapshot()


def test_wait_seconds_grow_when_a_peer_sends_late():
    waiting, late = run_threads(delayed_exchanges, 2, 0.3, timeout=20)
    assert waiting.region("late").wait_seconds >= 0.25
    assert waiting.region("prompt").wait_seconds < 0.25
    assert late.region("late").wait_seconds < 0.25 <= late.region("late").seconds
    assert waiting.wait_seconds >= waiting.region("late").wait_seconds


def product_step(session):
    """x * y and its backward inside a "step" region, over dealer correlations."""
    ctx = MPCContext(session)
    x = SharedTensor.from_plain(ctx, torch.ones(4, 4) if ctx.rank == 0 else None, 0, (4, 4),
                                requires_grad=True)
    with session.comm.region("step"):
        (x * x).backward(torch.ones(4, 4))
    return session.comm.snapshot()


def test_operations_get_forward_and_backward_regions_with_their_waits():
    for rank, snap in enumerate(run_threads(product_step, 2, dealer_handler=CorrelationDealer,
                                            timeout=20)):
        step, forward, backward = (snap.region(name) for name in
                                   ("step", "step/Mul.forward", "step/Mul.backward"))
        assert forward.calls == backward.calls == 1 and forward.rounds >= 1
        assert step.seconds >= forward.seconds + backward.seconds
        assert forward.prg_seconds > 0 and step.prg_seconds >= forward.prg_seconds
        assert (forward.dealer_wait_seconds > 0) == (rank == 0)   # small correlations: party 0's alone
        assert all(getattr(c, f) >= 0 for c in snap.regions.values() for f in TIME_FIELDS)
