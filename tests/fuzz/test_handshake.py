"""Fuzzing connection set-up and the first frames of a session (issue 15).

* The accepting side (`Acceptor._handshake`, over a real loopback TCP connection) gets any
  hello: random bytes, or a hello frame whose JSON holds any values for role, rank and world
  size, mutated like the frame fuzz's frames. It must accept exactly the valid hellos and refuse
  everything else in one line, never raise, never stop accepting.
* The connecting side (`transport._client_handshake`) gets any answer: it raises only
  PeerError/FrameError/CertificateError, or returns for the right peer's hello.
* A session's seed agreement (`Session(...)` over live TcpChannels to party 0 and the dealer)
  gets any first frames: it holds 32-byte seeds, or raises FrameError/PeerError at once.
"""
import io
import json
import socket
import struct
import sys
import time
import unittest.mock

import pytest
from hypothesis import example, given, strategies as st

from mpcft.runtime import CertificateError, FrameError, PeerError
from mpcft.runtime.config import ClusterConfig, Endpoint
from mpcft.runtime.frames import FrameType
from mpcft.runtime.session import Session
from mpcft.runtime.transport import Acceptor, SendWatchdog, TcpChannel, Transport, _client_handshake

from . import harness
from .wire import any_bytes, built_frames, header

pytestmark = pytest.mark.timeout(300)

WORLD = 3
CONFIG = ClusterConfig(tuple(Endpoint(r, "127.0.0.1", 40000 + r) for r in range(WORLD)),
                       Endpoint(None, "127.0.0.1", 40100), tls=False, timeout=5.0)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, WORLD + 1), st.integers(),
                    st.floats(allow_nan=False), st.text(max_size=8),
                    st.sampled_from(["party", "dealer", "Party", ""]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
hello_objects = st.one_of(
    st.fixed_dictionaries({}, optional={"role": json_values, "rank": json_values,
                                        "world_size": json_values, "error": json_values,
                                        "extra": json_values}),
    st.fixed_dictionaries({"role": st.sampled_from(["party", "dealer"]),
                           "rank": st.integers(-1, WORLD), "world_size": st.integers(1, WORLD + 1)}),
    json_values)
hello_payloads = st.one_of(hello_objects.map(lambda v: json.dumps(v).encode()),
                           st.binary(max_size=64))
hellos = st.one_of(any_bytes, built_frames(seq=0, frame_types=st.just(FrameType.HELLO),
                                           payloads=hello_payloads))


def hello_frame(obj, seq=0):
    payload = json.dumps(obj).encode()
    return header(FrameType.HELLO, 2, (len(payload),), seq, len(payload)) + payload


_SHARED = {}


def tcp_pair():
    """(client, server) ends of a fresh loopback TCP connection."""
    if "listener" not in _SHARED:
        _SHARED["listener"] = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(_SHARED["listener"].getsockname())
    server, _ = _SHARED["listener"].accept()
    return client, server


def acceptor():
    """Party 2's acceptor (plaintext), expecting parties 0 and 1; nothing connects to its port."""
    if "acceptor" not in _SHARED:
        me = Endpoint(2, "127.0.0.1", 0)
        _SHARED["acceptor"] = Acceptor(CONFIG, me, [0, 1], None, time.monotonic() + 3600)
    return _SHARED["acceptor"]


def watchdog():
    if "watchdog" not in _SHARED:
        _SHARED["watchdog"] = SendWatchdog(5.0)
    return _SHARED["watchdog"]


@pytest.fixture(scope="module", autouse=True)
def _close_shared():
    yield
    if "acceptor" in _SHARED:
        _SHARED.pop("acceptor").stop()
    if "listener" in _SHARED:
        _SHARED.pop("listener").close()
    if "watchdog" in _SHARED:
        _SHARED.pop("watchdog").stop()


def valid_party_hello(data):
    """The rank if `data` is exactly one hello frame a party of CONFIG may send party 2."""
    if len(data) < 32:
        return None
    magic, version, kind, code, ndim, seq, nbytes, length = struct.unpack("!4sBBBBQQQ", data[:32])
    if (magic, version, kind, code, ndim, seq) != (b"MPCF", 1, FrameType.HELLO, 2, 1, 0) \
            or not nbytes == length == len(data) - 32:
        return None
    try:
        obj = json.loads(data[32:].decode())
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    rank, size = obj.get("rank"), obj.get("world_size")
    if obj.get("role") == "party" and type(rank) is int and rank in (0, 1) and type(size) is int \
            and size == WORLD:
        return rank
    return None


@given(data=hellos)
@example(data=hello_frame({"role": "party", "rank": 1, "world_size": WORLD}))
@example(data=hello_frame({"role": "party", "rank": True, "world_size": WORLD}))
@example(data=hello_frame({"role": "party", "rank": 1.0, "world_size": 3.0}))
@example(data=hello_frame([1, 2]))
@example(data=hello_frame({"role": "party", "rank": 1, "world_size": WORLD}, seq=1))
@harness.fuzz_settings(200)
def test_acceptor_accepts_valid_hellos_and_refuses_the_rest_in_one_line(data):
    accept = acceptor()
    client, server = tcp_pair()
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        refusals = len(accept.refusals)
        with harness.case("handshake: acceptor", allowed=()), \
                unittest.mock.patch.object(sys, "stderr", io.StringIO()):
            accept._handshake(server, ("127.0.0.1", 1))
        rank = valid_party_hello(data)
        if rank is None:
            assert accept.accepted == {} and len(accept.refusals) == refusals + 1
            assert "\n" not in accept.refusals[-1]
        else:
            assert list(accept.accepted) == [rank] and len(accept.refusals) == refusals
            answer = json.loads(client.recv(1 << 16)[32:])
            assert answer == {"role": "party", "rank": 2, "world_size": WORLD}
    finally:
        for sock in accept.accepted.values():
            sock.close()
        accept.accepted.clear()
        accept._done.clear()
        client.close()
        server.close()


@given(data=hellos, to_dealer=st.booleans())
@example(data=hello_frame({"role": "party", "rank": 1, "world_size": WORLD}), to_dealer=False)
@example(data=hello_frame({"role": "dealer", "rank": None, "world_size": WORLD}), to_dealer=True)
@example(data=hello_frame({"error": {"nested": [1]}}), to_dealer=False)
@example(data=hello_frame({"role": "party", "rank": False}), to_dealer=False)
@harness.fuzz_settings(200)
def test_connecting_side_raises_only_project_errors_on_any_answer(data, to_dealer):
    target = CONFIG.dealer if to_dealer else CONFIG.party(1)
    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(harness.CASE_SECONDS)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        with harness.case("handshake: connecting", (PeerError, CertificateError)):
            _client_handshake(ours, CONFIG, CONFIG.party(0), target, None, "fuzz", target.name)
    finally:
        ours.close()
        theirs.close()


seed_frames = st.one_of(
    any_bytes, built_frames(frame_types=st.sampled_from([FrameType.SEED, FrameType.TENSOR])),
    built_frames(frame_types=st.just(FrameType.SEED), payloads=st.binary(min_size=32, max_size=32)),
    built_frames(frame_types=st.just(FrameType.SEED), payloads=st.binary(max_size=40)))


def seed(value=b"s" * 32, seq=1):
    return header(FrameType.SEED, 2, (len(value),), seq, len(value)) + value


@given(from_party=seed_frames, from_dealer=seed_frames)
@example(from_party=seed(), from_dealer=seed())
@example(from_party=seed(b"s" * 31), from_dealer=seed())
@example(from_party=seed(), from_dealer=header(FrameType.SEED, 6, (4,), 1, 32) + bytes(32))
@example(from_party=header(FrameType.GOODBYE, 2, (0,), 1, 0), from_dealer=seed())
@harness.fuzz_settings(150)
def test_seed_agreement_takes_32_byte_seeds_or_fails_at_once(from_party, from_dealer):
    ends, channels = [], {}
    try:
        for name, data in (("party 0", from_party), ("dealer", from_dealer)):
            ours, theirs = socket.socketpair()
            ends.append(theirs)
            channels[name] = TcpChannel(ours, name, 1 << 20, watchdog(), 1 << 20)
            theirs.sendall(data)
            theirs.shutdown(socket.SHUT_WR)
        transport = Transport("tcp", {0: channels["party 0"]}, channels["dealer"])
        with harness.case("handshake: seeds", (FrameError, PeerError)):
            session = Session(1, 2, transport, timeout=harness.CASE_SECONDS)
            assert len(session.pair_seed(0)) == 32 and len(session.dealer_seed) == 32
            session.abort()
    finally:
        for channel in channels.values():
            channel.abort()
        for end in ends:
            end.close()
