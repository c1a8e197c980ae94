"""Fuzzing the dealer's request parsing (issue 15): requests from a party, through the
dealer's request loop (`DealerService`, as `serve` runs it) into `CorrelationDealer`.

Requests are well-formed correlation requests of every kind, then mutated: other kinds, missing,
extra or mistyped parameters, shapes with negative, float, boolean or huge sizes (up to 2^63,
and products that wrap around int64), wrong numbers and seq, non-objects, garbage bytes and
frames of other types or dtypes. The dealer must answer each with tensors of at most its
`max_elements` limit or a "refused: ..." message (never its "internal error": that is a
handler raising something other than ValueError), or drop the party with FrameError; it
never allocates beyond the limit, whatever a request claims.
"""
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import example, given, strategies as st

from mpcft.protocols.correlations import KINDS, PARAMETERS, CorrelationDealer
from mpcft.runtime import DealerService, FrameError, PeerError
from mpcft.runtime.dealer import MAX_REQUEST_BYTES
from mpcft.runtime.frames import FrameType, json_tensor
from mpcft.runtime.session import DEALER_RESPONSE
from mpcft.runtime.transport import MemoryChannel

from . import harness

pytestmark = pytest.mark.timeout(300)

LIMIT = 1 << 14              # the fuzzed dealer's max_elements
BOUND = 64 * 8 * LIMIT       # bytes a request may make it take: a few dozen tensors of LIMIT
SIZES = [0, 1, 2, 3, 7, 64, 1 << 12, 1 << 20, (1 << 36) + 1, 1 << 28, (1 << 40) - 1, 1 << 40,
         1 << 62, 1 << 63, -1, -(1 << 63)]

sizes = st.one_of(st.integers(0, 8), st.sampled_from(SIZES), st.integers())
shapes = st.lists(sizes, max_size=4)
odd = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=6), st.just([]),
                st.lists(st.floats(), max_size=2), st.dictionaries(st.text(max_size=3), sizes, max_size=2),
                st.lists(sizes, min_size=17, max_size=20))


def value_for(rule):
    """A strategy of valid-looking values for a PARAMETERS rule, often at or past its edges."""
    if rule == "shape":
        return st.one_of(st.lists(st.integers(0, 6), max_size=3), shapes)
    if rule == "list":       # trunc_products' shifts and pairs, sign_gates' shifts
        return st.one_of(st.lists(st.integers(-1, 64), max_size=4),
                         st.lists(st.lists(st.integers(-1, 4), max_size=3), max_size=4), odd)
    least, greatest = rule
    return st.one_of(st.integers(least, min(greatest, least + 8)),
                     st.sampled_from([least, greatest, least - 1, greatest + 1]), st.integers())


@st.composite
def requests(draw, seq):
    """A request (JSON object) for correlation kinds, mutated in zero or more ways."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    params = {name: draw(value_for(rule)) for name, rule in PARAMETERS[kind].items()}
    params["number"] = draw(st.one_of(st.just(0), st.sampled_from([1, -1, True, 0.0, "0", None])))
    if draw(st.booleans()):                        # the key epoch (absent: 0)
        params["epoch"] = draw(st.one_of(st.integers(0, 2), st.sampled_from([-1, True, 1 << 64]), odd))
    request = {"kind": kind, "params": params, "seq": seq}
    for mutation in draw(st.lists(st.sampled_from(
            ["kind", "drop", "extra", "value", "seq", "params", "request"]), max_size=3)):
        if mutation == "kind":
            request["kind"] = draw(st.one_of(st.text(max_size=12), odd, st.sampled_from(sorted(KINDS))))
        elif mutation == "drop" and params:
            params.pop(draw(st.sampled_from(sorted(params))))
        elif mutation == "extra":
            params[draw(st.text(max_size=8))] = draw(st.one_of(sizes, odd))
        elif mutation == "value" and params:
            params[draw(st.sampled_from(sorted(params)))] = draw(st.one_of(shapes, odd, sizes))
        elif mutation == "seq":
            request["seq"] = draw(st.one_of(odd, st.sampled_from([seq + 1, seq - 1, 1 << 64])))
        elif mutation == "params":
            request["params"] = draw(odd)
        elif mutation == "request":
            return draw(st.one_of(odd, st.just({"seq": seq}), st.just({"kind": kind, "seq": seq})))
    return request


@st.composite
def request_frames(draw):
    """A party's frames to the dealer: (frame type, uint8 payload or tensor), mostly requests."""
    out = []
    for seq in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["json"] * 6 + ["bytes", "frame"]))
        if how == "json":
            out.append((FrameType.REQUEST, json_tensor(draw(requests(seq)))))
        elif how == "bytes":
            blob = draw(st.one_of(st.binary(max_size=64), st.sampled_from(
                [b"[" * 100_000, b"1" * 5000, b'{"seq": 0, "kind": "triple", "params": ' + b"[" * 5000])))
            out.append((FrameType.REQUEST, torch.frombuffer(bytearray(blob or b" "), dtype=torch.uint8)))
        else:
            out.append((draw(st.sampled_from(list(FrameType))),
                        torch.zeros(draw(st.integers(0, 3)), dtype=draw(st.sampled_from(
                            [torch.uint8, torch.int64, torch.float32, torch.bool])))))
    return out


def serve(frames, rank=0):
    """Send `frames` from party `rank` to a fresh dealer and let it answer them as `serve` does
    (an in-memory channel cannot answer after the party's goodbye, so the loop stops at the
    last frame); returns (party's end, requests answered, the dealer's log)."""
    party, dealer = MemoryChannel.pair(f"party {rank}", "dealer", MAX_REQUEST_BYTES)
    log = io.StringIO()
    service = DealerService(CorrelationDealer(max_elements=LIMIT), 2, timeout=1.0,
                            idle_timeout=1.0, log=log)
    for frame_type, tensor in frames:
        party.send(frame_type, tensor, "fuzz")
    answered = 0
    try:
        for seq in range(len(frames)):
            request = service._next_request(rank, dealer, seq)
            if request is None:                      # the party said goodbye
                break
            service._answer(rank, dealer, seq, request)
            answered += 1
    finally:
        log_text = log.getvalue()
        assert "internal error" not in log_text and "failed" not in log_text, log_text[-3000:]
        check_answers(party, answered)
    return answered


def check_answers(party, answered):
    """Every answer the party receives: {"count": k} then k int64 tensors (uint8 for a value
    corrected in fewer bytes) within the limit, or {"error": "refused: ..."} (one line)."""
    for _ in range(answered):
        head = json.loads(party.recv("fuzz", 1.0, DEALER_RESPONSE)[1].numpy().tobytes())
        if "error" in head:
            assert head["error"].startswith("refused: "), head
            continue
        tensors = [party.recv("fuzz", 1.0)[1] for _ in range(head["count"])]
        assert all(t.dtype in (torch.int64, torch.uint8) for t in tensors)
        assert sum(t.nbytes for t in tensors) <= 8 * LIMIT


square = {"kind": "square", "seq": 0}
WARM_UP = [{"kind": "triple", "params": {"shape_a": [2], "shape_b": [2]}},
           {"kind": "matmul_triple", "params": {"shape_a": [2, 3], "shape_b": [3, 2]}},
           {"kind": "matmul_grads", "params": {"shape_a": [2, 3], "shape_b": [3, 2], "grad_a": 1, "grad_b": 1}},
           {"kind": "factor_products", "params": {"shape": [2, 3], "factors": [[2, 3], [2, 1]], "square": 1}},
           {"kind": "square", "params": {"shape": [2]}},
           {"kind": "trunc", "params": {"shape": [2], "bits": 20}},
           {"kind": "and_products", "params": {"words": 2, "factors": 3, "sets": [[0, 1], [0, 1, 2]]}},
           {"kind": "sign", "params": {"shape": [2, 3], "bits": 62, "digit_bits": 1}},
           {"kind": "select", "params": {"shape": [2, 3], "bits": 20, "digit_bits": 4, "factor": [3], "later": 1}},
           {"kind": "sign_gates", "params": {"shape": [2, 3], "bits": 14, "digit_bits": 4, "gates": [36, 20]}},
           {"kind": "trunc_products", "params": {"shape": [2], "bits": [20, 40], "pairs": [[0, 0], [0, 1]]}},
           {"kind": "dp_noise", "params": {"shape": [2], "variance_num": 9, "variance_den": 2}},
           {"kind": "dp_laplace", "params": {"shape": [2], "scale_num": 9, "scale_den": 2}}]
_WARM = []


def warm_up():
    """Answer one request of every kind once, outside any timed case: the kernels they use
    compile (Numba) on first use, which takes seconds."""
    if not _WARM:
        frames = [(FrameType.REQUEST, json_tensor(dict(r, seq=seq, params=dict(r["params"], number=0))))
                  for seq, r in enumerate(WARM_UP)]
        assert serve(frames) == len(WARM_UP)
        _WARM.append(True)


@given(frames=request_frames(), rank=st.sampled_from([0, 0, 0, 1]))
@example(frames=[(FrameType.REQUEST, json_tensor(dict(square, params={"shape": [(1 << 36) + 1, 1 << 28],
                                                                       "number": 0})))], rank=0)
@example(frames=[(FrameType.REQUEST, json_tensor(dict(square, params={"shape": [1 << 32, 1 << 32],
                                                                       "number": 0})))], rank=0)
@example(frames=[(FrameType.REQUEST, json_tensor({"kind": "sign", "seq": 0, "params": {
    "shape": [1 << 39, 1 << 39], "bits": 5, "digit_bits": 4, "number": 0}}))], rank=0)
@example(frames=[(FrameType.REQUEST, json_tensor(dict(square, params={"shape": [0, 68719476737, 68719476737],
                                                                       "number": 0})))], rank=0)
@example(frames=[(FrameType.REQUEST, json_tensor({"kind": "triple", "seq": 0, "params": {
    "shape_a": [0, 1, 1 << 24, 1], "shape_b": [1 << 24, 1, 1 << 24], "number": 0}}))], rank=0)
@example(frames=[(FrameType.REQUEST, json_tensor({"kind": "dp_laplace", "seq": 0, "params": {
    "shape": [2], "scale_num": (1 << 62) - 1, "scale_den": (1 << 62) - 2, "number": 0}}))], rank=0)
@example(frames=[(FrameType.REQUEST, json_tensor({"kind": "matmul_triple", "seq": 0, "params": {
    "shape_a": [3], "shape_b": [3], "number": 0}}))], rank=0)
@harness.fuzz_settings(200)
def test_dealer_answers_or_refuses_every_request_within_its_limit(frames, rank):
    warm_up()
    with harness.case("dealer: requests", (FrameError, PeerError), BOUND):
        serve(frames, rank)


def test_the_bound_fails_a_dealer_without_its_limit():
    """Self-check: a dealer whose limit were 2^40 would answer this request, taking over
    128 MiB: the fuzz test's bound catches that."""
    request = json_tensor({"kind": "square", "seq": 0, "params": {"shape": [4096, 4096], "number": 0}})
    with pytest.raises(AssertionError, match="resident"):
        with harness.case("dealer: self-check", (FrameError, PeerError), BOUND):
            party, dealer = MemoryChannel.pair("party 0", "dealer", 1 << 30)
            party.send(FrameType.REQUEST, request, "fuzz")
            service = DealerService(CorrelationDealer(max_elements=1 << 40), 2, log=io.StringIO())
            service._answer(0, dealer, 0, service._next_request(0, dealer, 0))
            assert np.prod(party.recv("fuzz", 1.0)[1].shape) > 0
