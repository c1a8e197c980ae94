"""The hand-off between the Flower server and the aggregators: mutual TLS with the right
identities on both ends, length-checked framing that refuses malformed messages before
allocating what they announce, and the aggregator's checks of the server's round request."""
import copy
import json
import math
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import example, given, strategies as st

from mpcft.federated import aggregation
from mpcft.federated.aggregator import MAX_CLIENTS, RequestError, parse_request
from mpcft.federated.handoff import (MAGIC, MAX_HEADER_BYTES, SERVER_IDENTITY, HandoffError, accept_server,
                                     connect_aggregator, recv_message, send_message)
from mpcft.runtime import tls
from mpcft.runtime.errors import PeerError
from mpcft.runtime.local import free_ports

from ..fuzz import harness

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, parties 0 and 1, the dealer and the Flower server's certificate."""
    folder = tls.make_certs(tmp_path_factory.mktemp("handoff") / "certs", 2, dealer=True)
    tls.make_cert(tls.load_ca(tls.default_ca_dir(folder)), SERVER_IDENTITY, folder)
    return folder


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """A flower-server certificate of another CA."""
    folder = tls.make_certs(tmp_path_factory.mktemp("other") / "certs", 1, dealer=False)
    tls.make_cert(tls.load_ca(tls.default_ca_dir(folder)), SERVER_IDENTITY, folder)
    return folder


class Listener:
    """accept_server(...) running in a thread: .sock or .error once it returns."""

    def __init__(self, certs, identity="party-0", timeout=TIMEOUT):
        self.port = free_ports(1)[0]
        self.sock = self.error = None
        self.thread = threading.Thread(target=self._run, args=(certs, identity, timeout), daemon=True)
        self.thread.start()

    def _run(self, certs, identity, timeout):
        try:
            self.sock = accept_server("127.0.0.1", self.port, certs / "ca.pem", certs / f"{identity}.pem",
                                      certs / f"{identity}-key.pem", timeout)
        except Exception as exc:  # noqa: BLE001 - the test looks at what came out
            self.error = exc

    def join(self):
        self.thread.join(TIMEOUT + 5)
        assert not self.thread.is_alive()
        return self

    def close(self):
        self.join()
        if self.sock is not None:
            self.sock.close()


def connect(port, rank, certs, identity=SERVER_IDENTITY):
    """connect_aggregator, retried while the listener is not up yet."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return connect_aggregator("127.0.0.1", port, rank, certs / "ca.pem", certs / f"{identity}.pem",
                                      certs / f"{identity}-key.pem", TIMEOUT)
        except PeerError as exc:
            if "Connection refused" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_messages_both_ways_over_mutual_tls(certs):
    listener = Listener(certs)
    server_side = connect(listener.port, 0, certs)
    try:
        aggregator_side = listener.join().sock
        assert listener.error is None and aggregator_side is not None
        body = os.urandom(300_000)                          # more than one TLS record
        request = {"type": "round", "round": 1, "parts": [["client-0", len(body)]]}
        sender = threading.Thread(target=send_message, args=(server_side, request, body, "aggregator 0"))
        sender.start()                                      # the body may not fit the socket buffers
        assert recv_message(aggregator_side, "the Flower server") == (request, body)
        sender.join()
        reply = {"type": "result", "round": 1, "clients": ["client-0"], "rejected": {}}
        send_message(aggregator_side, reply, b"\x01" * 80)
        assert recv_message(server_side, "aggregator 0", max_body=80) == (reply, b"\x01" * 80)
        send_message(server_side, {"type": "done"})
        assert recv_message(aggregator_side, "the Flower server", max_body=0) == ({"type": "done"}, b"")
        aggregator_side.close()
        with pytest.raises(HandoffError, match="connection closed by aggregator 0|connection to aggregator 0 lost"):
            recv_message(server_side, "aggregator 0")
    finally:
        server_side.close()
        listener.close()


def test_a_client_with_a_party_certificate_is_refused(certs):
    listener = Listener(certs)
    sock = connect(listener.port, 0, certs, identity="party-1")
    try:
        listener.join()
        assert listener.sock is None and isinstance(listener.error, HandoffError)
        assert "'party-1' connected, not 'flower-server'" in str(listener.error)
    finally:
        sock.close()
        listener.close()


def test_a_client_of_another_ca_is_refused(certs, stranger):
    listener = Listener(certs)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                sock = connect_aggregator("127.0.0.1", listener.port, 0, stranger / "ca.pem",
                                          stranger / "flower-server.pem", stranger / "flower-server-key.pem", 5)
                sock.close()
            except PeerError as exc:                   # our side refuses the other CA's party-0 too
                if "Connection refused" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
            break
        listener.join()
        assert listener.sock is None and isinstance(listener.error, HandoffError)
        assert "TLS handshake with the Flower server failed" in str(listener.error)
    finally:
        listener.close()


def test_the_server_refuses_an_aggregator_of_another_rank(certs):
    listener = Listener(certs, identity="party-1")
    try:
        with pytest.raises(HandoffError, match=r"presented 'party-1', not party-0"):
            connect(listener.port, 0, certs)
    finally:
        listener.close()
    assert listener.error is None                       # it saw the Flower server, whom it accepts


def test_no_server_within_the_timeout_and_no_aggregator_listening(certs):
    port = free_ports(1)[0]
    started = time.monotonic()
    with pytest.raises(HandoffError, match="did not connect to 127.0.0.1:.* within 0.3 s"):
        accept_server("127.0.0.1", port, certs / "ca.pem", certs / "party-0.pem", certs / "party-0-key.pem", 0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(PeerError, match="cannot reach aggregator 1"):
        connect_aggregator("127.0.0.1", port, 1, certs / "ca.pem", certs / "flower-server.pem",
                           certs / "flower-server-key.pem", 2)


# --- framing, byte by byte over socket pairs ---------------------------------------------

def message(header, body=b"", header_bytes=None, announced=None):
    data = json.dumps(header, sort_keys=True).encode() if header_bytes is None else header_bytes
    size = len(body) if announced is None else announced
    return MAGIC + struct.pack("!I", len(data)) + data + struct.pack("!Q", size) + body


def received(data, max_body=1 << 20, close=True, timeout=2.0, bound=2 * harness.MIB):
    """What recv_message makes of `data` from a peer (which then closes, if `close`): the
    (header, body), or the HandoffError; never more than `bound` bytes taken."""
    ours, theirs = socket.socketpair()
    ours.settimeout(timeout)

    def peer():
        try:
            theirs.sendall(data)
        except OSError:                 # the receiver refused early and closed
            pass
        if close:
            theirs.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=peer, daemon=True)  # data beyond the socket buffers
    sender.start()
    try:
        with harness.tracing(), harness.case("federated: hand-off message", (HandoffError,), bound) as outcome:
            result = recv_message(ours, "the peer", max_body)
        return outcome.error if outcome.error is not None else result
    finally:
        ours.close()
        sender.join(5)
        theirs.close()


def refused(data, *words, **kwargs):
    error = received(data, **kwargs)
    assert isinstance(error, HandoffError), error
    for word in words:
        assert word in str(error), str(error)
    return str(error)


def test_a_message_round_trips_over_a_socket_pair():
    header = {"type": "round", "n": [1, 2.5, None, "x"], "nested": {"a": True}}
    assert received(message(header, b"body" * 100)) == (header, b"body" * 100)
    assert received(message({}, b"")) == ({}, b"")
    assert received(message({"k": 1}, b"x" * 10), max_body=10) == ({"k": 1}, b"x" * 10)


def test_wrong_magic_is_refused():
    good = message({"type": "done"})
    refused(b"MPCFTHO2" + good[8:], "not an mpcft hand-off message")
    refused(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an mpcft hand-off message")
    refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), "not an mpcft hand-off message")


def test_announced_lengths_over_the_bounds_are_refused_before_reading():
    """The peer stays open and silent: a receiver that waited for the announced bytes would time out."""
    for length in (MAX_HEADER_BYTES + 1, 1 << 31, (1 << 32) - 1):
        refused(MAGIC + struct.pack("!I", length), f"announced a header of {length} bytes", close=False)
    for size, limit in [(1025, 1024), (1 << 40, 1 << 20), ((1 << 64) - 1, 1 << 32), (1, 0)]:
        refused(message({"type": "round"}, announced=size), f"announced {size} bytes (limit {limit})",
                max_body=limit, close=False)


def test_a_header_at_the_bound_is_read():
    header = {"pad": "x" * (MAX_HEADER_BYTES - 11)}
    assert len(json.dumps(header)) == MAX_HEADER_BYTES
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        sender = threading.Thread(target=send_message, args=(theirs, header, b"ok"))
        sender.start()
        assert recv_message(ours, "the peer") == (header, b"ok")
        sender.join()


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe{}", b"", b"{\"a\": 1", b"[" * 100_000,
                                  b"{\"a\": " * 50_000, b"\x00" * 16, b"{} {}"])
def test_a_header_that_is_not_json_is_refused(text):
    refused(message(None, header_bytes=text), "sent an unreadable header")


@pytest.mark.parametrize("text", [b"[1, 2]", b"3", b"null", b"\"round\"", b"true", b"[]", b"1e999"])
def test_a_header_that_is_not_an_object_is_refused(text):
    refused(message(None, header_bytes=text), "sent a header that is not a JSON object")


def test_a_peer_that_closes_mid_message_is_refused():
    whole = message({"type": "round", "round": 2}, b"0123456789" * 3)
    for cut in range(len(whole)):
        refused(whole[:cut], "connection closed by the peer")
    assert received(whole) == ({"type": "round", "round": 2}, b"0123456789" * 3)


def test_what_a_peer_announces_is_not_allocated_before_it_arrives():
    """A body of 2^40 announced (within a max_body that large), 100 bytes sent, then the peer
    closes: the receiver takes memory for what arrived (and one 4 MiB read), not 2^40."""
    refused(message({"type": "round"}, b"x" * 100, announced=1 << 40), "connection closed by the peer",
            max_body=1 << 40, bound=6 * harness.MIB)
    refused(MAGIC + struct.pack("!I", MAX_HEADER_BYTES) + b"{", "connection closed by the peer",
            bound=MAX_HEADER_BYTES + 2 * harness.MIB)


def test_a_silent_peer_times_out():
    started = time.monotonic()
    refused(MAGIC + struct.pack("!I", 10) + b"{}", "sent nothing within the timeout", close=False, timeout=0.3)
    assert time.monotonic() - started < 3


@given(data=st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=48).map(lambda b: MAGIC + b),
    st.tuples(st.binary(max_size=40), st.integers(0, 1 << 16), st.binary(max_size=40)).map(
        lambda t: MAGIC + struct.pack("!I", len(t[0])) + t[0] + struct.pack("!Q", t[1]) + t[2]),
    st.tuples(st.integers(0, 200), st.integers(0, 255), st.integers(1, 255)).map(
        lambda t: bytes(b ^ t[2] if i == t[0] % 60 else b
                        for i, b in enumerate(message({"type": "round", "round": t[1]}, b"abcdef" * 3))))))
@example(data=message({"a": 1}, b"zz"))
@harness.fuzz_settings(150)
def test_recv_message_returns_or_refuses_any_bytes(data):
    out = received(data, max_body=1 << 16)
    if not isinstance(out, HandoffError):
        header, body = out
        assert isinstance(header, dict) and isinstance(body, bytes) and len(body) <= 1 << 16
        assert data.startswith(MAGIC)


# --- the aggregator's checks of the round request ----------------------------------------

MAX_BODY = 1 << 20


def request():
    """A round request as strategy.SecureFedAvg sends it (with its parts' lengths)."""
    return {"type": "round", "federation": "fed-" + "12" * 8, "round": 3,
            "layout": [["layer.bias", [7]], ["layer.weight", [5, 7]], ["scalar", []]],
            "frac_bits": 16, "secret_counts": False, "weighting": "examples", "planned_clients": 4,
            "min_clients": 2, "clipping_norm": 0.0, "noise_multiplier": 0.0, "noise_source": "dealer",
            "weight_cap": 0, "expected_weight": 0.0,
            "parts": [["client-0", 700], ["client-1", 702], ["client-2", 0]]}


def test_a_valid_request_parses():
    parsed = parse_request(request(), MAX_BODY)
    round_ = parsed["round"]
    assert (round_.federation, round_.number, round_.secret_counts, round_.frac_bits) == \
        ("fed-" + "12" * 8, 3, False, 16)
    assert round_.spec.names == ("layer.bias", "layer.weight", "scalar")
    assert round_.spec.shapes == ((7,), (5, 7), ()) and round_.spec.numel == 43
    assert parsed["parts"] == [("client-0", 700), ("client-1", 702), ("client-2", 0)]
    assert parsed["clipping_norm"] is None and parsed["noise_multiplier"] == 0.0
    assert (parsed["weighting"], parsed["planned_clients"], parsed["min_clients"], parsed["noise_source"]) == \
        ("examples", 4, 2, "dealer")
    dp = dict(request(), weighting="uniform", clipping_norm=1.5, noise_multiplier=1.1, noise_source="parties",
              secret_counts=True)
    parsed = parse_request(dp, MAX_BODY)
    assert parsed["clipping_norm"] == 1.5 and parsed["noise_multiplier"] == 1.1 and parsed["round"].secret_counts
    assert parse_request(dict(request(), clipping_norm=2), MAX_BODY)["clipping_norm"] == 2
    capped = parse_request(dict(dp, weighting="capped", weight_cap=100, expected_weight=3.5), MAX_BODY)
    assert (capped["weight_cap"], capped["expected_weight"], parsed["weight_cap"]) == (100, 3.5, None)


@pytest.mark.parametrize("change", [
    {"round": 0}, {"round": -1}, {"round": True}, {"round": 3.0}, {"round": "3"}, {"round": None},
    {"federation": 7}, {"federation": None},
    {"frac_bits": 7}, {"frac_bits": 25}, {"frac_bits": True}, {"frac_bits": 16.0},
    {"secret_counts": 0}, {"secret_counts": "false"},
    {"weighting": "median"}, {"weighting": None},
    {"planned_clients": 0}, {"planned_clients": MAX_CLIENTS + 1}, {"planned_clients": False},
    {"min_clients": 0}, {"min_clients": 2.5},
    {"clipping_norm": -1.0}, {"clipping_norm": math.nan}, {"clipping_norm": math.inf}, {"clipping_norm": True},
    {"clipping_norm": "1"}, {"clipping_norm": 1e300},
    {"noise_multiplier": -0.1}, {"noise_multiplier": math.nan}, {"noise_multiplier": math.inf},
    {"noise_multiplier": 1e6}, {"noise_multiplier": False},
    {"noise_source": "server"},
    {"noise_multiplier": 1.0, "weighting": "examples", "clipping_norm": 1.0},   # noise needs uniform weights
    {"noise_multiplier": 1.0, "weighting": "uniform", "clipping_norm": 0.0},    # ... and a clipping norm
    {"weight_cap": -1}, {"weight_cap": 2.0}, {"weight_cap": (1 << 24) + 1}, {"weight_cap": True},
    {"expected_weight": -1.0}, {"expected_weight": math.nan}, {"expected_weight": math.inf}, {"expected_weight": "2"},
    {"weighting": "capped", "weight_cap": 0, "clipping_norm": 1.0},              # capped weights need a cap
    {"weighting": "capped", "weight_cap": 10, "clipping_norm": 0.0},             # ... and a clipping norm
    {"weighting": "capped", "weight_cap": 1 << 24, "clipping_norm": 1e3},        # ... within the ring
    {"layout": None}, {"layout": {}}, {"layout": "layer"}, {"layout": [["a"]]}, {"layout": [["a", [1], 2]]},
    {"layout": [["a", [-1]]]}, {"layout": [["a", [1]], ["a", [2]]]}, {"layout": [["a", 5]]},
    {"layout": [["a", [math.inf]]]}, {"layout": [["a", [1.5]]]}, {"layout": [["a", [True]]]},
    {"layout": [["a", ["3"]]]}, {"layout": [["a", "12"]]}, {"layout": ["ab"]}, {"layout": [[3, [1]]]},
    {"layout": [["a", [None]]]}, {"layout": [["a", [1] * 1000]]},
    {"layout": [["a", [MAX_BODY // 8 + 1]]]}, {"layout": [["a", [1 << 62, 1 << 62]]]},
    {"layout": [[f"w{i}", [MAX_BODY // 8 // 100]] for i in range(101)]},
    {"layout": [[f"w{i}", [1]] for i in range((1 << 12) + 1)]},
    {"parts": None}, {"parts": [["client-0"]]}, {"parts": [["client-0", 1, 2]]}, {"parts": [["c", -1]]},
    {"parts": [["c", math.inf]]}, {"parts": [["c", 1.5]]}, {"parts": [["c", True]]}, {"parts": [["c", "7"]]},
    {"parts": [[1, 7]]}, {"parts": [["c", 1], ["c", 2]]}, {"parts": [["c", 1]] * 2},
    {"parts": [[f"c{i}", 0] for i in range(MAX_CLIENTS + 1)]},
])
def test_a_malformed_request_is_refused(change):
    with pytest.raises(RequestError) as info:
        parse_request(dict(request(), **change), MAX_BODY)
    assert str(info.value).startswith("the round request") or "layout" in str(info.value), str(info.value)


@pytest.mark.parametrize("key", sorted(set(request()) - {"type"}))
def test_a_request_missing_a_field_is_refused(key):
    header = request()
    del header[key]
    with pytest.raises(RequestError, match=f"'?{key}"):
        parse_request(header, MAX_BODY)


def test_the_layout_bound_is_max_body():
    layout = [["w", [MAX_BODY // 8]]]
    assert parse_request(dict(request(), layout=layout), MAX_BODY)["round"].spec.numel == MAX_BODY // 8
    with pytest.raises(RequestError, match="more values than the hand-off bound"):
        parse_request(dict(request(), layout=layout), MAX_BODY - 1)


odd = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([-1, 0, 1, 1 << 62, 1 << 64, -(1 << 63)]),
                st.floats(), st.text(max_size=6), st.sampled_from(["examples", "uniform", "dealer", "parties"]),
                st.lists(st.integers(-2, 1 << 40), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                               max_size=2))
json_like = st.recursive(odd, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                         max_leaves=6)


@st.composite
def mutated_requests(draw):
    header = request()
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["drop", "value", "layout", "extent", "part", "parts", "clients"]))
        key = draw(st.sampled_from(sorted(header) or ["round"]))
        if how == "drop":
            header.pop(key, None)
        elif how == "value":
            header[key] = draw(json_like)
        elif how == "layout":
            header["layout"] = draw(st.one_of(json_like, st.lists(st.tuples(json_like, json_like).map(list),
                                                                  max_size=3)))
        elif how == "extent" and isinstance(header.get("layout"), list) and header["layout"]:
            layout = copy.deepcopy(header["layout"])
            entry = draw(st.integers(0, len(layout) - 1))
            if isinstance(layout[entry], list) and len(layout[entry]) == 2 and isinstance(layout[entry][1], list):
                layout[entry][1] = layout[entry][1] + [draw(odd)]
            header["layout"] = layout
        elif how == "part":
            header["parts"] = [[draw(json_like), draw(odd)] for _ in range(draw(st.integers(0, 3)))]
        elif how == "parts":
            header["parts"] = draw(json_like)
        else:
            client = draw(st.sampled_from(["client-0", "client-1", ""]))
            header["parts"] = [[client, 3], [client, draw(st.integers(0, 9))]]
    return header


@given(header=mutated_requests())
@example(header=dict(request(), layout=[["a", [float("inf")]]]))
@example(header=dict(request(), parts=[["c", float("-inf")]]))
@example(header=dict(request(), clipping_norm=float("inf")))
@example(header=dict(request(), layout=[["a", [1 << 62] * 32]]))
@harness.fuzz_settings(200)
def test_parse_request_raises_only_request_error(header):
    with harness.case("federated: round request", (RequestError,)) as outcome:
        parsed = parse_request(header, MAX_BODY)
    if outcome.error is None:
        round_ = parsed["round"]
        assert isinstance(round_.number, int) and not isinstance(round_.number, bool) and round_.number >= 1
        assert round_.spec.numel * 8 <= MAX_BODY
        assert all(isinstance(s, int) and s >= 0 for shape in round_.spec.shapes for s in shape)
        assert all(isinstance(c, str) and isinstance(n, int) and n >= 0 for c, n in parsed["parts"])
        assert len({c for c, _ in parsed["parts"]}) == len(parsed["parts"])
        assert parsed["weighting"] in aggregation.WEIGHTINGS
        assert parsed["clipping_norm"] is None or math.isfinite(parsed["clipping_norm"])
