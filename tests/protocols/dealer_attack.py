"""A party 0 that deviates: it asks the dealer for correlations the protocol never uses.

The recovery below is the attack a security review ran on seed-compressed correlations whose
pads depended on the correlation number only: with "square" [1], "trunc" [1] bits 0 and
"trunc" [1] bits 1 answered from the same pads, party 1's pads cancel and party 0 learns the
joint mask r = r0 + r1, hence party 1's share of it.
"""
from mpcft.runtime.errors import DealerError

RING = 1 << 64
ATTACK_LAYOUTS = [("square", {"shape": [1]}), ("trunc", {"shape": [1], "bits": 0}),
                  ("trunc", {"shape": [1], "bits": 1})]


def unsigned(values) -> list:
    """Ring elements of a tensor or a list of tensors as integers in [0, 2^64)."""
    tensors = values if isinstance(values, (list, tuple)) else [values]
    return [int(v) % RING for t in tensors for v in t.reshape(-1).tolist()]


def recover_mask(square, trunc0, trunc1):
    """r from party 0's three corrections if they share party 1's pads, else None.

    square = r^2 - p1, trunc0 = [msb(r) - p1, (r mod 2^63) - p2], trunc1 = [msb(r) - p1,
    ((r mod 2^63) >> 1) - p2]: trunc0 - trunc1 gives ceil(m / 2) for m = r mod 2^63, and
    square - trunc0[0] = r^2 - msb(r) picks r among the four candidates."""
    (c_sq,), (top0, mid0), (_, mid1) = (unsigned(t) for t in (square, trunc0, trunc1))
    half = (mid0 - mid1) % RING
    target = (c_sq - top0) % RING
    for m in (2 * half - 1, 2 * half):
        for top in (0, 1):
            r = (m + (top << 63)) % RING
            if 0 <= m < 1 << 63 and (r * r - top) % RING == target:
                return r
    return None


def ask(session, kind, number, params):
    """The dealer's answer to party 0's request, or the refusal's text."""
    try:
        return session.dealer_request(kind, number=number, **params)
    except DealerError as exc:
        return str(exc)


def deviating_party(session):
    """Party 0 asks for the attack's layouts as number 0 each, then replays and skips
    ahead; party 1 (honest) only returns its dealer seed, for the test to check with."""
    if session.rank != 0:
        return session.dealer_seed
    answers = [ask(session, kind, 0, params) for kind, params in ATTACK_LAYOUTS]
    replay = ask(session, "square", 0, {"shape": [1]})
    ahead = ask(session, "trunc", 5, {"shape": [1], "bits": 0})
    malformed = [ask(session, "square", 1, {"shape": [1], "seq": 0}),
                 ask(session, "square", 1, {"shape": "x"}),
                 ask(session, "triple", 0, {"shape_a": [2], "shape_b": [3]}),
                 ask(session, "square", 1, {"shape": [1 << 20, 1 << 20]})]
    again = ask(session, "square", 1, {"shape": [1]})    # the next number is still answered
    return session.dealer_seed, answers, replay, ahead, malformed, again
