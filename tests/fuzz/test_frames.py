"""Fuzzing the frame parser and a channel's receive path (issue 15).

Inputs: random bytes, and frames built field by field (any frame type, dtype code, ndim,
shape, seq, length) with payloads that fit, fall short or run over, then optionally flipped
bytes. They go through `transport.read_frame` with a real TcpChannel's admission step (as its
reader thread runs it, after the receiving step announced what it expects), through
`MemoryChannel._decode`, through the JSON of control frames and the hello; and through a
socket pair into a live channel's reader thread. Only FrameError/PeerError may come out,
promptly, and the memory a case takes is bounded by the bytes that actually arrived (plus one
PAYLOAD_STEP) or by what the step announced, never by what a header claims.
"""
import socket
import struct
import unittest.mock

import numpy as np
import pytest
import torch
from hypothesis import example, given, strategies as st

from mpcft.runtime import FrameError, PeerError, frames, transport
from mpcft.runtime.frames import Expected, FrameType
from mpcft.runtime.transport import MemoryChannel, SendWatchdog, TcpChannel

from . import harness
from .wire import CONTROL, MAX_FRAME, BytesSocket, any_bytes, built_frames, control_frame, header

pytestmark = pytest.mark.timeout(300)

PEER = "party 7"
STEP = 1 << 16                   # transport.PAYLOAD_STEP while fuzzing: memory taken per piece
REFUSED = (FrameError, PeerError)
ANNOUNCED = [None, Expected(), Expected(torch.int64, (2, 2)), Expected(torch.uint8, (None,)),
             Expected(torch.uint8, (None,), FrameType.REQUEST),
             Expected(torch.uint8, (32,), FrameType.SEED), Expected(torch.float32, (3,))]
_SHARED = {}


def watchdog():
    """The send watchdog of the channels under test (one for the module)."""
    if "watchdog" not in _SHARED:
        _SHARED["watchdog"] = SendWatchdog(5.0)
    return _SHARED["watchdog"]


def idle_channel():
    """A TcpChannel whose reader waits on a silent socket: its admission step is the real one."""
    if "channel" not in _SHARED:
        a, b = socket.socketpair()
        _SHARED.update(channel=TcpChannel(a, PEER, MAX_FRAME, watchdog(), 1 << 20), other=b)
    return _SHARED["channel"]


@pytest.fixture(scope="module", autouse=True)
def _close_shared():
    yield
    if "channel" in _SHARED:
        _SHARED.pop("channel").abort()
        _SHARED.pop("other").close()
    if "watchdog" in _SHARED:
        _SHARED.pop("watchdog").stop()


def decode_like_the_reader(data, announce):
    """What the receiving side does with `data`: read it (admitted by a real channel after
    `announce`), decode it as an in-memory channel does, parse control frames' JSON."""
    channel = idle_channel()
    channel._announced = None
    if announce is not None:
        channel.expect_next(announce)
    sock = BytesSocket(data)
    try:
        frame = transport.read_frame(sock, PEER, MAX_FRAME, 1, channel._admit)
    except FrameError as exc:        # refused at its header, before its payload was read
        if "bool payload" not in str(exc):
            assert sock.pos <= 24 + 8 * data[7], f"payload read before refusing: {exc}"
        raise
    if frame is not None and frame[0] in CONTROL:
        frames.tensor_json(frame[1], PEER)
    if frame is not None and frame[0] == FrameType.HELLO:
        transport._read_hello(BytesSocket(data[:8] + struct.pack("!Q", 0) + data[16:]), PEER)
    return frame


def memory_decode(data):
    """The in-memory channel's decoding of a header and payload handed over whole."""
    if len(data) < 24:
        return None
    head = 24 + 8 * data[7]
    nbytes = struct.unpack("!Q", data[16:24])[0]
    if len(data) < head + nbytes:
        return None
    payload = np.frombuffer(data[head:head + nbytes], np.uint8).copy()
    return MemoryChannel(PEER, MAX_FRAME)._decode(data[:head], payload)


def received_bound(data, announce):
    """Memory a case may take: twice what arrived and one piece (PAYLOAD_STEP), or what the
    step announced exactly (read straight into place), plus interpreter slack."""
    announced = 0
    if announce is not None and announce.exact:
        announced = int(np.prod(announce.shape)) * torch.empty(0, dtype=announce.dtype).element_size()
    return 2 * len(data) + STEP + announced + harness.MIB


@given(data=st.one_of(any_bytes, built_frames()), announce=st.sampled_from(ANNOUNCED))
@example(data=header(3, 6, (0, 1 << 62), 1, 0), announce=None)          # zero-size, huge span
@example(data=header(3, 2, (MAX_FRAME,), 1, MAX_FRAME) + b"x" * 100, announce=None)
@example(data=header(3, 2, (1 << 40,), 1, 1 << 40), announce=None)      # beyond max_frame_bytes
@example(data=control_frame(b"[" * 5000), announce=None)
@harness.fuzz_settings(300)
def test_parser_refuses_with_frame_errors_only_and_bounded_memory(data, announce):
    with harness.tracing(), unittest.mock.patch.object(transport, "PAYLOAD_STEP", STEP):
        with harness.case("frames: parser", REFUSED, received_bound(data, announce)):
            decode_like_the_reader(data, announce)
        with harness.case("frames: parser", REFUSED, received_bound(data, None)):
            memory_decode(data)


def live_recv(data, announce):
    """Feed `data` to a live reader thread over a socket pair, then close; recv once."""
    a, b = socket.socketpair()
    channel = TcpChannel(a, PEER, MAX_FRAME, watchdog(), 1 << 20)
    try:
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)
        return channel.recv("fuzz", harness.CASE_SECONDS, announce)
    finally:
        channel.abort()
        b.close()


@given(data=st.one_of(any_bytes, built_frames()), announce=st.sampled_from(ANNOUNCED))
@example(data=header(3, 6, (4,), 1, 32) + bytes(16), announce=Expected(torch.int64, (4,)))
@example(data=header(3, 9, (3,), 1, 12) + bytes(12), announce=Expected(torch.int64, (2, 2)))
@harness.fuzz_settings(150)
def test_live_reader_fails_its_channel_at_once(data, announce):
    with harness.tracing(), unittest.mock.patch.object(transport, "PAYLOAD_STEP", STEP):
        with harness.case("frames: socket", REFUSED, received_bound(data, announce)):
            frame_type, tensor, _ = live_recv(data, announce)
            if announce is not None:
                assert announce.problem(frame_type, tensor.dtype, tensor.shape) is None


@pytest.mark.parametrize("claimed", [MAX_FRAME, MAX_FRAME // 2, 1 << 28])
def test_a_header_claiming_a_huge_payload_takes_memory_only_as_bytes_arrive(claimed):
    """The bound can fail: a reader that reserved the claimed length up front (as one did
    before issue 12) takes `claimed` bytes here, far above the bound of what arrived."""
    data = header(3, 2, (claimed,), 1, claimed) + b"\0" * 1000
    with harness.tracing(), unittest.mock.patch.object(transport, "PAYLOAD_STEP", STEP):
        with pytest.raises(AssertionError, match="traced"):
            with harness.case("frames: self-check", REFUSED, received_bound(data, None)):
                np.empty(claimed, np.uint8)           # what an unchecked reader would do
        with harness.case("frames: self-check", REFUSED, received_bound(data, None)) as outcome:
            decode_like_the_reader(data, None)
    assert isinstance(outcome.error, PeerError) and "middle of a frame" in str(outcome.error)
    oversized = header(3, 2, (MAX_FRAME + 1,), 1, MAX_FRAME + 1)
    with pytest.raises(FrameError, match="oversized frame"):
        decode_like_the_reader(oversized, None)
