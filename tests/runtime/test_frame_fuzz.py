"""Fuzzed frames through the receiving code path: only FrameError/PeerError may come out.

Each frame goes through `transport.read_frame` with a real channel's admission step (as the
reader thread runs it), through `MemoryChannel._decode`, and, for control frames, through the
JSON decoding of hellos, requests and responses. A sample also goes through a live reader thread,
whose channel must fail at once, never wait out a timeout.
"""
import json
import random
import socket
import struct
import threading
import time

import numpy as np
import pytest
import torch

from mpcft.runtime import FrameError, PeerError, frames, transport
from mpcft.runtime.frames import DTYPES, Expected, FrameType
from mpcft.runtime.transport import MemoryChannel, SendWatchdog, TcpChannel

from runtime_helpers import BytesSocket, frame_bytes, raw_header

pytestmark = pytest.mark.timeout(120)

PEER = "party 7"
MAX_FRAME = 1 << 20
CONTROL = (FrameType.HELLO, FrameType.REQUEST, FrameType.RESPONSE)
BIG = (1 << 62, 1 << 63, (1 << 64) - 1, 1 << 48, 1 << 47, 1 << 32, 2 ** 31 - 1)
GARBAGE_JSON = [b"", b"[1]", b"1", b'"x"', b"null", b"true", b"{", b'{"a":', b"\xff\xfe",
                b"[" * 100_000, b'{"a":' * 50_000, b"1" * 5000, b"1e999", b"NaN", b'{"rank": [1]}',
                b'{"role": "party", "rank": true, "world_size": 2}', b'{"count": -1}',
                b'{"count": "x"}', b'{"error": [1]}', b'{"seq": 1.5}']


def valid_frame(rng):
    """(header fields, payload) of a random well-formed frame."""
    code = rng.choice(list(DTYPES))
    shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 4)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[code][1].itemsize
    payload = bytes(rng.getrandbits(8) for _ in range(nbytes))
    if code == 1:
        payload = bytes(b & 1 for b in payload)
    return dict(frame_type=rng.choice(list(FrameType)), code=code, shape=shape, seq=1,
                nbytes=nbytes), payload


def mutated_frame(rng):
    """Bytes of a frame after one random or structured mutation (or none)."""
    fields, payload = valid_frame(rng)
    kind = rng.randrange(14)
    if kind == 1:
        data = bytearray(raw_header(**fields) + payload)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(min(len(data), 24 + 8 * len(fields["shape"])))] = rng.getrandbits(8)
        return bytes(data)
    if kind == 2:
        shape = list(fields["shape"]) or [1]
        shape[rng.randrange(len(shape))] = rng.choice(BIG + (rng.getrandbits(64),))
        fields["shape"] = tuple(shape)
        if rng.random() < 0.5:
            fields["shape"] = (0,) + fields["shape"]
            fields["nbytes"], payload = 0, b""
    elif kind == 3:
        fields["nbytes"] = rng.choice([fields["nbytes"] + 1, max(0, fields["nbytes"] - 1),
                                       rng.getrandbits(64), MAX_FRAME, MAX_FRAME + 1, 0])
    elif kind == 4:
        fields["code"] = rng.randrange(256)
    elif kind == 5:
        fields["ndim"] = rng.randrange(256)
        fields["shape"] = tuple(rng.randrange(4) for _ in range(min(fields["ndim"], 20)))
    elif kind == 6:
        fields["seq"] = rng.choice([0, 2, rng.getrandbits(64)])
    elif kind == 7:
        fields["frame_type"] = rng.randrange(256)
    elif kind == 8:
        data = raw_header(**fields) + payload
        return data[:rng.randrange(len(data) + 1)]
    elif kind == 9:
        payload = rng.choice(GARBAGE_JSON + [bytes(rng.getrandbits(8) for _ in range(20))])
        fields.update(frame_type=rng.choice(CONTROL), code=2, shape=(len(payload),),
                      nbytes=len(payload))
    elif kind == 10:
        payload = bytes(rng.randrange(2, 256) for _ in range(4))
        fields.update(code=1, shape=(4,), nbytes=4)
    elif kind == 11:
        if rng.random() < 0.5:
            fields["magic"] = rng.choice([b"MPCG", b"\0\0\0\0", b"mpcf"])
        else:
            fields["version"] = rng.choice([0, 2, 255])
    elif kind == 12:
        payload += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
    elif kind == 13:          # the reviewed frame: no payload, a zero and a dimension >= 2^62
        fields.update(shape=(0, rng.choice(BIG[:3])), nbytes=0, code=rng.choice(list(DTYPES)))
        payload = b""
    return raw_header(**fields) + payload


def decode_like_the_reader(data, channel, announce):
    """What the receiving side does with `data`: read it (admission by `channel`), decode it as
    an in-memory channel would, and parse control frames' JSON as hello, request or response."""
    if announce is not None:
        channel.expect_next(announce)
    frame = transport.read_frame(BytesSocket(data), PEER, MAX_FRAME, 1, channel._admit)
    head = 24 + 8 * data[7] if len(data) >= 24 else len(data) + 1
    nbytes = struct.unpack("!Q", data[16:24])[0] if len(data) >= 24 else 0
    if len(data) >= head + nbytes:    # header and payload as an in-memory sender hands them over
        payload = np.frombuffer(data[head:head + nbytes], np.uint8).copy()
        MemoryChannel(PEER, MAX_FRAME)._decode(data[:head], payload)
    if frame is not None and frame[0] in CONTROL:
        frames.tensor_json(frame[1], PEER)
    if frame is not None and frame[0] == FrameType.HELLO:
        transport._read_hello(BytesSocket(data[:8] + struct.pack("!Q", 0) + data[16:]), PEER)
    return frame


@pytest.fixture(scope="module")
def watchdog():
    dog = SendWatchdog(5.0)
    yield dog
    dog.stop()


def open_channel(watchdog):
    """(TcpChannel reading one end of a socket pair, the other end)."""
    a, b = socket.socketpair()
    return TcpChannel(a, PEER, MAX_FRAME, watchdog, 1 << 20), b


@pytest.fixture
def idle_channel(watchdog):
    """A TcpChannel whose reader waits on a silent socket: its admission step is the real one."""
    channel, other = open_channel(watchdog)
    yield channel
    channel.abort()
    other.close()


def test_ten_thousand_fuzzed_frames_raise_only_frame_or_peer_errors(idle_channel):
    rng = random.Random(20240611)
    announcements = [None, Expected(), Expected(torch.int64, (2, 2)), Expected(torch.uint8, (None,)),
                     Expected(torch.uint8, (None,), FrameType.REQUEST)]
    outcomes = {"decoded": 0, "refused": 0}
    for i in range(10_000):
        data = mutated_frame(rng)
        try:
            decode_like_the_reader(data, idle_channel, rng.choice(announcements))
            outcomes["decoded"] += 1
        except (FrameError, PeerError):
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the finding: anything else escapes the reader
            pytest.fail(f"frame #{i} {data[:64].hex()} raised {type(exc).__name__}: {exc}")
    assert outcomes["decoded"] > 200 and outcomes["refused"] > 5000, outcomes


@pytest.mark.parametrize("shape", [(0, 1 << 62), (0, 1 << 63), (1 << 62, 0), (0, 1 << 47, 1 << 47)])
def test_zero_sized_frame_with_a_huge_dimension_is_refused(shape):
    header = raw_header(code=6, shape=shape, nbytes=0)
    with pytest.raises(FrameError, match=f"malformed frame from {PEER}: shape .* spans more than"):
        transport.read_frame(BytesSocket(header), PEER, MAX_FRAME, 1)
    assert transport.read_frame(BytesSocket(raw_header(code=6, shape=(0, 1 << 40))), PEER,
                                MAX_FRAME, 1)[1].shape == (0, 1 << 40)


def live_reader_outcome(watchdog, data):
    """Feed `data` to a live reader thread, then close: (recv outcome, seconds it took)."""
    channel, other = open_channel(watchdog)
    try:
        other.sendall(data)
        other.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        try:
            outcome = channel.recv("fuzz", 10.0)[0].name
        except (FrameError, PeerError) as exc:
            outcome = type(exc).__name__
        return outcome, time.monotonic() - start
    finally:
        channel.abort()
        other.close()


def test_live_reader_fails_its_channel_at_once_on_fuzzed_frames(watchdog, monkeypatch):
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    rng = random.Random(7)
    for _ in range(150):
        data = mutated_frame(rng)
        outcome, seconds = live_reader_outcome(watchdog, data)
        assert seconds < 1.0, (outcome, data[:64].hex())
    assert died == []


def test_any_reader_error_fails_the_channel_with_its_cause(watchdog, monkeypatch):
    """An unexpected error while decoding (here MemoryError) fails the channel at once, over TCP
    and in memory, instead of killing a thread and leaving recv to time out."""
    def no_memory(*args):
        raise MemoryError("cannot allocate")
    monkeypatch.setattr(frames, "to_tensor", no_memory)
    start = time.monotonic()
    channel, other = open_channel(watchdog)
    try:
        other.sendall(frame_bytes(FrameType.TENSOR, torch.zeros(3), 1))
        with pytest.raises(PeerError, match="fuzz: receiving from party 7 failed: MemoryError"):
            channel.recv("fuzz", 30.0)
    finally:
        channel.abort()
        other.close()
    sender, receiver = MemoryChannel.pair("party 0", PEER)
    sender.send(FrameType.TENSOR, torch.zeros(3), "fuzz")
    with pytest.raises(PeerError, match="fuzz: receiving from party 0 failed: MemoryError"):
        receiver.recv("fuzz", 30.0)
    assert time.monotonic() - start < 2.0


def test_control_frames_with_garbage_json_are_refused():
    for payload in GARBAGE_JSON:
        tensor = torch.tensor(list(payload), dtype=torch.uint8)
        try:
            value = frames.tensor_json(tensor, PEER)
        except FrameError:
            continue
        assert json.dumps(value)
    with pytest.raises(FrameError, match="expected 1-D uint8"):
        frames.tensor_json(torch.zeros(2, dtype=torch.bfloat16), PEER)
