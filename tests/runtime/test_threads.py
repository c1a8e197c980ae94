"""Sessions as threads over the in-memory transport (what protocol tests use)."""
import time

import numpy as np
import pytest
import torch

from mpcft.runtime import DealerError, MPCTimeoutError, PeerError, run_threads
from mpcft.runtime.dealer import echo_handler, expand_seed

pytestmark = pytest.mark.timeout(60)


def collectives(session):
    r, n = session.rank, session.world_size
    with session.comm.region("all"):
        ex = session.exchange({p: torch.full((4,), 10 * r + p) for p in session.peers})
        gathered = session.all_gather(np.array([r], dtype=np.int32))
        at_root = session.gather(torch.tensor([r + 0.5]), root=n - 1)
        bcast = session.broadcast(torch.tensor([[1, 2], [3, 4]]) if r == 0 else None, root=0)
        with session.comm.round():
            if r == 0:
                session.send(1, torch.ones(3, dtype=torch.bool))
            if r == 1:
                pt = session.recv(0)
                assert pt.dtype == torch.bool and bool(pt.all())
    return {"ex": {p: t.tolist() for p, t in ex.items()}, "gathered": [int(t) for t in gathered],
            "root": None if at_root is None else [float(t) for t in at_root],
            "bcast": bcast.tolist(), "comm": session.comm.snapshot(),
            "seeds": {p: session.pair_seed(p) for p in session.peers}}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_collectives_and_exact_counts(n):
    results = run_threads(collectives, n, timeout=20)
    for r, res in enumerate(results):
        assert res["ex"] == {p: [10 * p + r] * 4 for p in range(n) if p != r}
        assert res["gathered"] == list(range(n))
        assert res["root"] == ([p + 0.5 for p in range(n)] if r == n - 1 else None)
        assert res["bcast"] == [[1, 2], [3, 4]]
        comm = res["comm"]
        # exchange + all_gather + gather + broadcast, plus the grouped send/recv on ranks 0, 1
        assert comm.rounds == 4 + (r in (0, 1)) == comm.region("all").rounds
        sent = 32 * (n - 1) + 4 * (n - 1) + (4 if r != n - 1 else 0) \
            + (32 * (n - 1) if r == 0 else 0) + (3 if r == 0 else 0)
        assert comm.bytes_sent == sent and comm.wire_bytes_sent > sent
        for p in range(n):
            if p != r:
                assert len(res["seeds"][p]) == 32
                assert res["seeds"][p] == results[p]["seeds"][r]
    all_seeds = [s for res in results for s in res["seeds"].values()]
    assert len(set(all_seeds)) == n * (n - 1) // 2


def dealer_use(session):
    ping = session.dealer_request("ping", values=[session.rank, 9])
    (rand,) = session.dealer_request("random", shape=[3, 2])
    mine = np.frombuffer(expand_seed(session.dealer_seed, 1, 48), dtype=np.int64).reshape(3, 2)
    with pytest.raises(DealerError, match="unknown request kind 'nope'"):
        session.dealer_request("nope")
    again = session.dealer_request("ping")
    return ([t.tolist() for t in ping], bool((rand.numpy() == mine).all()), again[0].tolist(),
            session.comm.dealer_requests, session.comm.dealer_bytes_received, session.dealer_seed)


def test_sessions_over_memory_have_no_cluster_config():
    assert run_threads(lambda session: session.config, 2, timeout=20) == [None, None]


def test_dealer_requests_seeds_and_errors():
    results = run_threads(dealer_use, 3, dealer_handler=echo_handler, timeout=20)
    for rank, (ping, rand_ok, again, requests, received, seed) in enumerate(results):
        assert ping == [[rank, 0], [rank, 9]] and rand_ok and again == [rank, 3]
        assert requests == 4 and received == 32 + 48 + 16 and len(seed) == 32
    assert len({r[5] for r in results}) == 3


def test_first_exception_is_reraised_and_others_stop_at_once():
    def program(session):
        if session.rank == 1:
            raise ValueError("rank one is unhappy")
        return session.recv(1)

    start = time.monotonic()
    with pytest.raises(ValueError, match="rank one is unhappy"):
        run_threads(program, 3, timeout=30)
    assert time.monotonic() - start < 5


def test_step_timeout_names_peer_and_region():
    def program(session):
        if session.rank == 0:
            with session.comm.region("matmul"):
                session.recv(1)
        else:
            time.sleep(1.5)

    with pytest.raises(MPCTimeoutError, match="recv from party 1 .*region 'matmul'.*within 1 s"):
        run_threads(program, 2, timeout=10, step_timeout=1)


def test_peer_that_finished_is_reported_as_closed():
    def program(session):
        if session.rank == 0:
            return session.recv(1)

    with pytest.raises(PeerError, match="party 1 closed its session"):
        run_threads(program, 2, timeout=10)
