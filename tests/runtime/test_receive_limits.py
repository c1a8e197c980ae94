"""What a peer can make a receiver hold, what a step accepts, and what the dealer answers.

* a header claiming a huge payload reserves no big buffer; a flood of frames stops at the
  inbox bound (the sender is held back), and a frame beyond the bound still fits an empty inbox,
  so two parties exchanging large tensors at once never block each other;
* a received tensor of another dtype or shape than the step expects raises FrameError;
* a dealer handler's ValueError reaches the party as "refused: ...", any other error as a
  generic refusal whose details only the dealer's log shows.
"""
import socket
import threading
import time
import tracemalloc

import pytest
import torch

from mpcft.runtime import DealerError, DealerService, FrameError, PeerError, run_threads
from mpcft.runtime.frames import Expected, FrameType
from mpcft.runtime.transport import SendWatchdog, TcpChannel

from runtime_helpers import frame_bytes, raw_header

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


@pytest.fixture
def watchdog():
    dog = SendWatchdog(10.0)
    yield dog
    dog.stop()


@pytest.fixture
def tcp_pair():
    """Two ends of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    yield client, accepted
    client.close()
    accepted.close()


def channel_on(sock, watchdog, max_buffered_bytes, max_frame_bytes=1 << 32, name="party 0"):
    return TcpChannel(sock, name, max_frame_bytes, watchdog, max_buffered_bytes)


def traced_peak_while(action, settle=0.5):
    """Peak bytes traced by tracemalloc (numpy buffers included) during `action` and `settle` s."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        time.sleep(settle)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_payload_that_never_comes_reserves_no_big_buffer(tcp_pair, watchdog):
    fake, mine = tcp_pair
    channel = channel_on(mine, watchdog, 64 * MiB)
    claim = raw_header(code=6, shape=(3 << 27,), nbytes=3 << 30) + bytes(4096)
    try:
        peak = traced_peak_while(lambda: fake.sendall(claim))
        assert peak < 40 * MiB             # one PAYLOAD_STEP piece, not 3 GiB
        fake.shutdown(socket.SHUT_WR)
        with pytest.raises(PeerError, match="connection closed by party 0 in the middle of a frame"):
            channel.recv("recv from party 0", 5.0)
    finally:
        channel.abort()


def test_a_header_the_step_does_not_expect_fails_at_once(tcp_pair, watchdog):
    fake, mine = tcp_pair
    channel = channel_on(mine, watchdog, 64 * MiB)
    try:
        channel.expect_next(Expected(torch.int64, (4,)))
        start = time.monotonic()
        peak = traced_peak_while(lambda: fake.sendall(
            raw_header(code=6, shape=(3 << 27,), nbytes=3 << 30)), settle=0.1)
        with pytest.raises(FrameError, match="step: party 0 sent torch.int64 \\[402653184\\] where "
                                             "torch.int64 \\[4\\] was expected"):
            channel.recv("step", 30.0, Expected(torch.int64, (4,)))
        assert time.monotonic() - start < 1.0 and peak < 4 * MiB
    finally:
        channel.abort()


def test_a_flood_of_frames_is_held_back_at_the_inbox_bound(tcp_pair, watchdog):
    fake, mine = tcp_pair
    channel = channel_on(mine, watchdog, 4 * MiB)
    frames_sent = []

    def flood():
        for i in range(64):
            fake.sendall(frame_bytes(FrameType.TENSOR, torch.full((MiB // 8,), i), i + 1))
            frames_sent.append(i)

    sender = threading.Thread(target=flood, daemon=True)
    try:
        sender.start()
        time.sleep(1.0)
        assert channel._buffered <= 4 * MiB and len(channel._inbox) <= 4
        assert len(frames_sent) < 40        # the rest waits in the sender: TCP pushes back
        for i in range(64):
            assert int(channel.recv("recv from party 0", 10.0)[1][0]) == i
        sender.join(10)
        assert len(frames_sent) == 64 and channel._buffered == 0
    finally:
        channel.abort()


def test_large_tensors_both_ways_at_once_pass_a_small_inbox_bound(tcp_pair, watchdog):
    """Each side's 64 MB frame is larger than its peer's 1 MiB bound: an empty inbox takes it."""
    ends = [channel_on(sock, watchdog, MiB, name=f"party {1 - r}") for r, sock in enumerate(tcp_pair)]
    results = {}

    def party(rank):
        data = torch.full((8 * MiB,), rank, dtype=torch.int64)
        ends[rank].expect_next(Expected.like(data))
        ends[rank].send(FrameType.TENSOR, data, "exchange")
        results[rank] = ends[rank].recv("exchange", 20.0, Expected.like(data))[1]

    threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(bool((results[r] == 1 - r).all()) for r in range(2))
    finally:
        for end in ends:
            end.abort()


def test_large_frames_arrive_intact_announced_late_or_never(tcp_pair, watchdog):
    """A 96 MiB frame whose step announces it while it arrives (read in pieces, then in place)
    and one nobody announces (read in pieces, joined) arrive intact."""
    fake, mine = tcp_pair
    channel = channel_on(mine, watchdog, 1 << 30)
    data = torch.arange(12 * MiB, dtype=torch.int64)
    wire = frame_bytes(FrameType.TENSOR, data, 1) + frame_bytes(FrameType.TENSOR, data, 2)

    def send_in_two_parts():
        fake.sendall(wire[:24 * MiB])
        time.sleep(0.3)
        fake.sendall(wire[24 * MiB:])

    sender = threading.Thread(target=send_in_two_parts, daemon=True)
    try:
        sender.start()
        time.sleep(0.15)
        late = channel.recv("step", 10.0, Expected.like(data))[1]
        never = channel.recv("step", 10.0)[1]
        assert torch.equal(late, data) and torch.equal(never, data)
    finally:
        sender.join(10)
        channel.abort()


def mismatched_exchange(session):
    """Party 0 sends int32, party 1 int64: each expects what it sent."""
    dtype = torch.int32 if session.rank == 0 else torch.int64
    return session.exchange({1 - session.rank: torch.zeros(4, dtype=dtype)})


def stated_expectations(session):
    """Lengths differ by rank: exchange and broadcast accept them when the step says so."""
    mine = torch.arange(session.rank + 2)
    got = session.exchange({1 - session.rank: mine}, shape=(None,))
    shape = session.broadcast(torch.tensor([5, 6, 7]) if session.rank == 0 else None, 0,
                              dtype=torch.int64, shape=(None,))
    gathered = session.gather(torch.ones(2), root=1)
    return got[1 - session.rank].tolist(), shape.tolist(), gathered is not None


def recv_of_wrong_shape(session):
    if session.rank == 0:
        session.send(1, torch.zeros(3, dtype=torch.int64))
        return None
    return session.recv(0, dtype=torch.int64, shape=(4,))


def broadcast_of_wrong_dtype(session):
    message = torch.zeros(2, dtype=torch.float64) if session.rank == 0 else None
    return session.broadcast(message, 0, dtype=torch.int64, shape=(None,))


def test_received_tensors_of_another_dtype_or_shape_raise_frame_error():
    with pytest.raises(FrameError, match=r"recv from party \d in exchange: party \d sent "
                                         r"torch.int(32|64) \[4\] where torch.int(64|32) \[4\] "
                                         r"was expected"):
        run_threads(mismatched_exchange, 2, timeout=20)
    with pytest.raises(FrameError, match=r"recv from party 0: party 0 sent torch.int64 \[3\] "
                                         r"where torch.int64 \[4\] was expected"):
        run_threads(recv_of_wrong_shape, 2, timeout=20)
    with pytest.raises(FrameError, match=r"recv from party 0 in broadcast: party 0 sent "
                                         r"torch.float64 \[2\] where torch.int64 \[\*\] was"):
        run_threads(broadcast_of_wrong_dtype, 2, timeout=20)
    assert run_threads(stated_expectations, 2, timeout=20) == [
        ([0, 1, 2], [5, 6, 7], False), ([0, 1], [5, 6, 7], True)]


def picky_handler(rank, kind, params, seq, seeds):
    """Refuses "refuse" (ValueError), breaks on "crash" (KeyError) and "junk" (no tensors)."""
    if kind == "refuse":
        raise ValueError("no correlations of that kind today")
    if kind == "crash":
        return [{}["seq"]]
    if kind == "junk":
        return ["not a tensor"]
    return [torch.tensor([seq])]


def ask_picky(session):
    texts = []
    for kind in ("refuse", "crash", "junk"):
        try:
            session.dealer_request(kind)
        except DealerError as exc:
            texts.append(str(exc))
    return texts, session.dealer_request("fine")[0].tolist()


def test_dealer_refuses_with_the_value_error_and_hides_other_errors(capfd):
    results = run_threads(ask_picky, 2, dealer_handler=picky_handler, timeout=20)
    for texts, fine in results:
        assert texts == ["dealer request 'refuse' #0: refused: no correlations of that kind today",
                         "dealer request 'crash' #1: the dealer could not answer request #1 "
                         "(internal error)",
                         "dealer request 'junk' #2: the dealer could not answer request #2 "
                         "(internal error)"]
        assert fine == [3]
    log = capfd.readouterr().err
    assert "request #1 'crash' of party 0 failed" in log and "KeyError: 'seq'" in log
    assert "TypeError: cannot send" in log


def test_a_handler_class_is_instantiated_once_per_dealer():
    class Counting:
        instances = 0

        def __init__(self):
            Counting.instances += 1

        def __call__(self, rank, kind, params, seq, seeds):
            return []

    service = DealerService(Counting, 3)
    assert isinstance(service.handler, Counting) and Counting.instances == 1


class WorkingAhead:
    """A handler that answers [seq] and records, per call of work_ahead, busy() on entry and
    whether a request arrived while it worked (busy() turned True)."""
    calls = []

    def __call__(self, rank, kind, params, seq, seeds):
        return [torch.tensor([seq])]

    def work_ahead(self, seeds, busy):
        entered, deadline = busy(), time.monotonic() + 5
        while not busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        WorkingAhead.calls.append((entered, busy()))


def ask_with_pauses(session):
    answers = []
    for _ in range(3):
        answers += session.dealer_request("next")[0].tolist()
        time.sleep(0.1)
    return answers


def test_the_service_lets_a_handler_work_ahead_only_while_no_request_waits():
    WorkingAhead.calls.clear()
    assert run_threads(ask_with_pauses, 1, dealer_handler=WorkingAhead, timeout=30) == [[0, 1, 2]]
    # after each of the first two answers: called idle, left as the next request came
    assert WorkingAhead.calls[:2] == [(False, True), (False, True)]
